//! What the load generator measures: latencies, outcomes and bytes of each request, and the
//! JSON report made from them.

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// One request's measurements.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Wall time from sending to the whole answer read.
    pub latency: Duration,
    /// Bytes of the request body.
    pub req_body: u64,
    /// Bytes of the request as HTTP/1.1 would carry it (request line, headers, body), estimated
    /// from the headers sent.
    pub req_wire: u64,
    /// Bytes of the answer's body.
    pub resp_body: u64,
    /// Bytes of the answer as HTTP/1.1 would carry it (status line, headers, body).
    pub resp_wire: u64,
    /// When it was sent, in whole seconds since the load generator started.
    pub sent_s: u64,
}

/// Latency above which an answer counts as slow in [`Report::slow_seconds`] (the bench's
/// p99 limit).
pub const SLOW: Duration = Duration::from_millis(50);

/// Counters of one kind of request (enrollments, check-ins, command results).
#[derive(Debug, Default)]
pub struct Stats {
    latencies_us: Vec<u64>,
    idle_latencies_us: Vec<u64>,
    outcomes: BTreeMap<String, u64>,
    req_body: u64,
    req_wire: u64,
    resp_body: u64,
    resp_wire: u64,
    idle_req_wire: u64,
    idle_resp_wire: u64,
    with_state: u64,
    with_results: u64,
    commands: u64,
    slow_by_second: BTreeMap<u64, u64>,
}

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Serialize, Default)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

fn latency(us: &mut [u64]) -> Latency {
    if us.is_empty() {
        return Latency::default();
    }
    us.sort_unstable();
    let at = |q: f64| {
        let i = ((us.len() as f64 * q).ceil() as usize).clamp(1, us.len()) - 1;
        us[i] as f64 / 1000.0
    };
    Latency {
        p50_ms: at(0.50),
        p90_ms: at(0.90),
        p99_ms: at(0.99),
        max_ms: us[us.len() - 1] as f64 / 1000.0,
    }
}

/// The report of one kind of request.
#[derive(Debug, Serialize, Default)]
pub struct Report {
    /// Requests counted (all outcomes).
    pub requests: u64,
    /// Requests per outcome: an HTTP status (`200`, `304`, `503`...) or `error:<kind>`.
    pub outcomes: BTreeMap<String, u64>,
    /// Requests that failed (no answer, or a status other than 200/304).
    pub errors: u64,
    /// Requests per second over the measured window.
    pub rate_per_s: f64,
    /// Latency of every request with an answer.
    pub latency: Latency,
    /// Latency of the idle ones (answered 304).
    pub idle_latency: Latency,
    /// Mean request body bytes.
    pub req_body_bytes: f64,
    /// Mean request bytes on the wire (HTTP/1.1 estimate: request line, headers, body).
    pub req_wire_bytes: f64,
    /// Mean answer body bytes.
    pub resp_body_bytes: f64,
    /// Mean answer bytes on the wire (HTTP/1.1 estimate: status line, headers, body).
    pub resp_wire_bytes: f64,
    /// Mean request + answer wire bytes of an idle (304) check-in.
    pub idle_wire_bytes: f64,
    /// Check-ins that carried the state document.
    pub with_state: u64,
    /// Check-ins that carried update results.
    pub with_results: u64,
    /// Commands received in answers.
    pub commands: u64,
    /// Seconds (since the load generator started) in which answers slower than [`SLOW`] were
    /// sent, with how many: whether the slow tail comes in bursts (a stall of the server or
    /// the database) or is spread out (saturation).
    pub slow_seconds: SlowSeconds,
}

/// Where the slow answers fall in time.
#[derive(Debug, Serialize, Default)]
pub struct SlowSeconds {
    /// Answers slower than [`SLOW`].
    pub answers: u64,
    /// Distinct seconds they were sent in.
    pub seconds: u64,
    /// The 10 seconds with the most, as `[second, count]`, most first.
    pub worst: Vec<(u64, u64)>,
}

impl Stats {
    /// Counts one request that got an answer with `status`.
    pub fn answered(&mut self, status: u16, s: Sample) {
        *self.outcomes.entry(status.to_string()).or_default() += 1;
        let us = u64::try_from(s.latency.as_micros()).unwrap_or(u64::MAX);
        self.latencies_us.push(us);
        if s.latency > SLOW {
            *self.slow_by_second.entry(s.sent_s).or_default() += 1;
        }
        if status == 304 {
            self.idle_latencies_us.push(us);
            self.idle_req_wire += s.req_wire;
            self.idle_resp_wire += s.resp_wire;
        }
        self.req_body += s.req_body;
        self.req_wire += s.req_wire;
        self.resp_body += s.resp_body;
        self.resp_wire += s.resp_wire;
    }

    /// Counts one request that got no answer (`kind`: timeout, connect, body...).
    pub fn failed(&mut self, kind: &str) {
        *self.outcomes.entry(format!("error:{kind}")).or_default() += 1;
    }

    /// Notes what a check-in carried and what its answer held.
    pub fn carried(&mut self, with_state: bool, results: usize, commands: usize) {
        self.with_state += u64::from(with_state);
        self.with_results += u64::from(results > 0);
        self.commands += commands as u64;
    }

    /// The report over a window of `secs` seconds.
    pub fn report(mut self, secs: f64) -> Report {
        let requests: u64 = self.outcomes.values().sum();
        let errors = self
            .outcomes
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "200" | "304"))
            .map(|(_, v)| v)
            .sum();
        let answered = self.latencies_us.len().max(1) as f64;
        let idle = self.idle_latencies_us.len();
        Report {
            requests,
            errors,
            rate_per_s: if secs > 0.0 {
                requests as f64 / secs
            } else {
                0.0
            },
            latency: latency(&mut self.latencies_us),
            idle_latency: latency(&mut self.idle_latencies_us),
            req_body_bytes: self.req_body as f64 / answered,
            req_wire_bytes: self.req_wire as f64 / answered,
            resp_body_bytes: self.resp_body as f64 / answered,
            resp_wire_bytes: self.resp_wire as f64 / answered,
            idle_wire_bytes: if idle > 0 {
                (self.idle_req_wire + self.idle_resp_wire) as f64 / idle as f64
            } else {
                0.0
            },
            with_state: self.with_state,
            with_results: self.with_results,
            commands: self.commands,
            outcomes: self.outcomes,
            slow_seconds: slow_seconds(self.slow_by_second),
        }
    }
}

fn slow_seconds(by_second: BTreeMap<u64, u64>) -> SlowSeconds {
    let mut worst: Vec<(u64, u64)> = by_second.iter().map(|(&s, &n)| (s, n)).collect();
    worst.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    worst.truncate(10);
    SlowSeconds {
        answers: by_second.values().sum(),
        seconds: by_second.len() as u64,
        worst,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_errors() {
        let mut s = Stats::default();
        for ms in 1..=100u64 {
            let status = if ms % 2 == 0 { 304 } else { 200 };
            s.answered(
                status,
                Sample {
                    latency: Duration::from_millis(ms),
                    req_body: 100,
                    req_wire: 300,
                    resp_body: 0,
                    resp_wire: 100,
                    sent_s: ms / 10,
                },
            );
        }
        s.failed("timeout");
        let r = s.report(10.0);
        assert_eq!((r.requests, r.errors), (101, 1));
        assert_eq!(
            (r.latency.p50_ms, r.latency.p99_ms, r.latency.max_ms),
            (50.0, 99.0, 100.0)
        );
        assert_eq!(r.idle_wire_bytes, 400.0);
        // 51..=100 ms are slow: second 5 holds 51..=59, 6..=9 ten each, 10 holds 100
        assert_eq!((r.slow_seconds.answers, r.slow_seconds.seconds), (50, 6));
        assert_eq!(r.slow_seconds.worst[0], (6, 10));
        assert_eq!(r.slow_seconds.worst[4], (5, 9));
        assert!((r.rate_per_s - 10.1).abs() < 1e-9);
    }
}
