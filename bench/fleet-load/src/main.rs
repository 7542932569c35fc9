//! `fleet-load`: a load generator for `patch-server` (issue 17's scale benchmark).
//!
//! Enrolls N simulated devices through `/v1/enroll` with the app's secret (real tokens), then has
//! each check in every `--interval` with ±10 % jitter, as `docs/fleet.md` says a device does:
//! a state document of about `--state-bytes` sent on first contact and when it changes, only its
//! digest otherwise, `If-None-Match` with the last ETag (an idle device gets 304 and no body),
//! update results now and then (re-sent until acknowledged), and a result posted for every
//! command received. Requests go round-robin over every `--server` (several servers on one
//! database). After the run it prints one JSON report: latency percentiles, outcomes, errors,
//! bytes per check-in and the achieved rate, measured after `--warmup`.

mod device;
mod stats;

use anyhow::{bail, Context, Result};
use clap::Parser;
use device::{device_id, Device};
use formats::fleet::{
    CheckInResponse, CommandKind, CommandOutcome, CommandResult, EnrollRequest, EnrollResponse,
};
use rand::{Rng, SeedableRng};
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, ETAG, IF_NONE_MATCH, RETRY_AFTER};
use serde::Serialize;
use stats::{Report, Sample, Stats};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Simulated devices for patch-server: enroll, then check in periodically; prints a JSON report.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Server base URL (`http://127.0.0.1:8443`); repeat to spread requests round-robin over
    /// several servers sharing one database.
    #[arg(long = "server", required = true)]
    servers: Vec<String>,
    /// App name as registered with `patch-server app add`.
    #[arg(long)]
    app: String,
    /// File holding the app's enrollment secret (absent: approval mode, no secret sent).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Number of devices.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Time between two check-ins of a device, before ±10 % jitter (compress time with e.g. 6s).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Length of the check-in phase (after enrollment).
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time at the start of the check-in phase left out of the report (default: one interval,
    /// in which every device makes its first check-in with its whole state).
    #[arg(long, value_parser = humantime::parse_duration)]
    warmup: Option<Duration>,
    /// Approximate size of each device's state document, in bytes of compact JSON.
    #[arg(long, default_value_t = 1500)]
    state_bytes: usize,
    /// Probability that a check-in carries a changed state document.
    #[arg(long, default_value_t = 0.02)]
    state_change: f64,
    /// Probability that an update finished since the previous check-in (a result is sent).
    #[arg(long, default_value_t = 0.005)]
    result_rate: f64,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 32)]
    enroll_concurrency: usize,
    /// File of `device_id token` lines: devices found there are not enrolled again, new ones are
    /// appended (lets a ramp grow the same fleet step by step).
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Prefix of the device ids (`PREFIX-0000042`).
    #[arg(long, default_value = "load")]
    id_prefix: String,
    /// A new TCP connection for every request (as devices behind NAT would), instead of a pool of
    /// kept-alive connections.
    #[arg(long)]
    fresh_connections: bool,
    /// Connect from this many loopback source addresses (127.0.0.1, 127.0.0.2, ...), requests
    /// spread over them. A real fleet's devices come from many addresses; from a single one, a
    /// new connection per request at hundreds per second runs the kernel out of local ports for
    /// that (source, server) pair: each lingers 60 s in TIME_WAIT, and the port search that
    /// follows stalls connections. Only with servers on loopback addresses.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=250))]
    source_addresses: u8,
    /// Time allowed for one request.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Worker threads of the generator (it shares the machine with the server).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Seed of the simulated devices' choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the JSON report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only enroll the devices (and write --tokens), then report and exit.
    #[arg(long)]
    enroll_only: bool,
}

/// The whole run's report (printed as JSON).
#[derive(Serialize)]
struct RunReport {
    servers: Vec<String>,
    devices: usize,
    interval_s: f64,
    /// Devices that would make the same request rate checking in every 60 s.
    equivalent_devices_at_60s: f64,
    /// Check-ins per second the devices should make (devices / interval).
    expected_rate_per_s: f64,
    measured_window_s: f64,
    /// Check-ins sent over the whole check-in phase, warm-up included.
    checkins_total: usize,
    enrolled_now: usize,
    enroll: Report,
    checkin: Report,
    /// The check-ins sent during the warm-up (the first contacts, each with its whole state):
    /// not in the figures above, but an overloaded start shows here, and a device whose first
    /// check-in failed sends its state again in the window.
    warmup_checkin: Report,
    command_results: Report,
}

/// Shared by every device task.
struct Ctx {
    args: Args,
    /// One client per (server, source address): `clients[server][source]`.
    clients: Vec<Vec<reqwest::Client>>,
    next_server: AtomicUsize,
    checkins_total: AtomicUsize,
    window: (Instant, Instant),
    checkins: Mutex<Stats>,
    warmup_checkins: Mutex<Stats>,
    command_results: Mutex<Stats>,
}

impl Ctx {
    /// A server (base URL) and a client of one of the source addresses, both round-robin.
    fn pick(&self) -> (&str, &reqwest::Client) {
        let n = self.next_server.fetch_add(1, Ordering::Relaxed);
        let i = n % self.clients.len();
        let from = &self.clients[i];
        (
            self.args.servers[i].trim_end_matches('/'),
            &from[(n / self.clients.len()) % from.len()],
        )
    }

    fn in_window(&self, t: Instant) -> bool {
        t >= self.window.0 && t < self.window.1
    }

    /// Where a check-in sent at `t` is counted: the window's figures or the warm-up's.
    fn checkin_stats(&self, t: Instant) -> Option<&Mutex<Stats>> {
        if self.in_window(t) {
            Some(&self.checkins)
        } else if t < self.window.0 {
            Some(&self.warmup_checkins)
        } else {
            None
        }
    }
}

fn lock(m: &Mutex<Stats>) -> std::sync::MutexGuard<'_, Stats> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bytes of a header block as HTTP/1.1 writes it (`name: value\r\n` each, then `\r\n`).
fn header_bytes(h: &HeaderMap) -> u64 {
    h.iter()
        .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
        .sum::<u64>()
        + 2
}

/// Request line, the headers reqwest adds (host, accept, content-length) and ours, and the body.
fn request_wire(path: &str, host: &str, ours: &HeaderMap, body: usize) -> u64 {
    let line = format!("POST {path} HTTP/1.1\r\n").len();
    let implicit = format!("host: {host}\r\naccept: */*\r\ncontent-length: {body}\r\n").len();
    (line + implicit + body) as u64 + header_bytes(ours)
}

fn host_of(base: &str) -> &str {
    base.split("://").nth(1).unwrap_or(base)
}

fn failure_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "request"
    }
}

/// When the load generator started (times in the report count from it).
static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

/// POSTs `body` as JSON; returns (status, answer headers, answer body, sample).
async fn post(
    base: &str,
    client: &reqwest::Client,
    path: &str,
    headers: HeaderMap,
    body: Vec<u8>,
) -> std::result::Result<(u16, HeaderMap, Vec<u8>, Sample), &'static str> {
    let req_wire = request_wire(path, host_of(base), &headers, body.len());
    let req_body = body.len() as u64;
    let t0 = Instant::now();
    let resp = client
        .post(format!("{base}{path}"))
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(|e| failure_kind(&e))?;
    let status = resp.status().as_u16();
    let reason = resp.status().canonical_reason().unwrap_or("");
    let head = resp.headers().clone();
    let bytes = resp.bytes().await.map_err(|e| failure_kind(&e))?;
    let latency = t0.elapsed();
    let status_line = format!("HTTP/1.1 {status} {reason}\r\n").len() as u64;
    let sample = Sample {
        latency,
        req_body,
        req_wire,
        resp_body: bytes.len() as u64,
        resp_wire: status_line + header_bytes(&head) + bytes.len() as u64,
        sent_s: t0.duration_since(*EPOCH).as_secs(),
    };
    Ok((status, head, bytes.to_vec(), sample))
}

fn json_headers(token: Option<&str>) -> Result<HeaderMap> {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, "application/json".parse()?);
    if let Some(t) = token {
        h.insert(AUTHORIZATION, format!("Bearer {t}").parse()?);
    }
    Ok(h)
}

/// Reads `device_id token` lines.
fn read_tokens(path: &PathBuf) -> Result<std::collections::HashMap<String, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(d, t)| (d.to_string(), t.trim().to_string()))
        .collect())
}

/// Enrolls the devices that have no token yet; returns every device's token (None: failed).
async fn enroll_all(
    ctx: &Arc<Ctx>,
    secret: Option<String>,
) -> Result<(Vec<Option<String>>, usize, Report)> {
    let a = &ctx.args;
    let known = match &a.tokens {
        Some(p) => read_tokens(p)?,
        None => Default::default(),
    };
    let sem = Arc::new(Semaphore::new(a.enroll_concurrency.max(1)));
    let stats = Arc::new(Mutex::new(Stats::default()));
    let mut tokens: Vec<Option<String>> = vec![None; a.devices];
    let mut jobs = tokio::task::JoinSet::new();
    // enrollments start while this loop still spawns them
    let t0 = Instant::now();
    for (i, slot) in tokens.iter_mut().enumerate() {
        let id = device_id(&a.id_prefix, i);
        if let Some(t) = known.get(&id) {
            *slot = Some(t.clone());
            continue;
        }
        let permit = sem.clone().acquire_owned().await?;
        let (ctx, stats, secret) = (ctx.clone(), stats.clone(), secret.clone());
        jobs.spawn(async move {
            let _permit = permit;
            let body = EnrollRequest {
                app: ctx.args.app.clone(),
                device_id: id.clone(),
                secret,
                hostname: Some(format!("host-{i:07}")),
            };
            let body = serde_json::to_vec(&body).unwrap_or_default();
            let (base, client) = ctx.pick();
            let headers = json_headers(None).unwrap_or_default();
            match post(base, client, "/v1/enroll", headers, body).await {
                Ok((status, _, bytes, sample)) => {
                    lock(&stats).answered(status, sample);
                    if status == 200 {
                        if let Ok(r) = serde_json::from_slice::<EnrollResponse>(&bytes) {
                            return Some((i, id, r.token));
                        }
                        lock(&stats).failed("bad-enroll-answer");
                    } else if status != 200 && i < 3 {
                        eprintln!(
                            "fleet-load: enroll {id}: HTTP {status}: {}",
                            String::from_utf8_lossy(&bytes)
                        );
                    }
                }
                Err(kind) => lock(&stats).failed(kind),
            }
            None
        });
    }
    let mut fresh = Vec::new();
    while let Some(r) = jobs.join_next().await {
        if let Some((i, id, token)) = r? {
            tokens[i] = Some(token.clone());
            fresh.push((id, token));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    if let Some(p) = &a.tokens {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .with_context(|| format!("opening {}", p.display()))?;
        for (id, t) in &fresh {
            writeln!(f, "{id} {t}").with_context(|| format!("writing {}", p.display()))?;
        }
    }
    let stats = Arc::try_unwrap(stats)
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .unwrap_or_default();
    Ok((tokens, fresh.len(), stats.report(secs)))
}

/// Posts the result of a command the way the agent would (state for `report-state`).
async fn answer_command(ctx: &Ctx, dev: &Device, id: &str, kind: CommandKind) {
    let result = match kind {
        CommandKind::ReportState => CommandResult {
            outcome: CommandOutcome::Ok,
            message: None,
            data: Some(dev.state().clone()),
        },
        CommandKind::UploadLogs => CommandResult {
            outcome: CommandOutcome::Failed,
            message: Some("the load generator has no log files".into()),
            data: None,
        },
        _ => CommandResult {
            outcome: CommandOutcome::Ok,
            message: Some("simulated".into()),
            data: None,
        },
    };
    let body = serde_json::to_vec(&result).unwrap_or_default();
    let (base, client) = ctx.pick();
    let Ok(headers) = json_headers(Some(&dev.token)) else {
        return;
    };
    let t = Instant::now();
    let r = post(
        base,
        client,
        &format!("/v1/commands/{id}/result"),
        headers,
        body,
    )
    .await;
    if ctx.in_window(t) {
        let mut s = lock(&ctx.command_results);
        match r {
            Ok((status, _, _, sample)) => s.answered(status, sample),
            Err(kind) => s.failed(kind),
        }
    }
}

/// A device waits `interval` times a factor drawn uniformly from this range between two
/// check-ins.
const JITTER: (f64, f64) = (0.9, 1.1);

/// The delay before a device's first check-in, such that the fleet checks in at a steady rate
/// from the start, as one that was already running would: the time left until the next
/// check-in, seen at a random moment, of a device whose waits are `interval` × [`JITTER`].
/// Drawn from that time's density, (1 - F(x)) / mean: flat up to the shortest wait, then
/// falling linearly to zero at the longest. (A first check-in drawn uniformly over one
/// interval instead makes the second round overlap the first: around second `interval` the
/// rate reached 1.5 × the mean, a burst every step of the benchmark had there.)
fn first_delay(rng: &mut impl Rng, interval: f64) -> f64 {
    let (lo, hi) = (JITTER.0 * interval, JITTER.1 * interval);
    let mean = (lo + hi) / 2.0;
    let u: f64 = rng.random_range(0.0..1.0);
    if u < lo / mean || hi <= lo {
        u * mean
    } else {
        let v: f64 = rng.random_range(0.0..1.0);
        hi - (hi - lo) * v.sqrt()
    }
}

/// One device's life: check in every interval (± jitter) until the window closes.
async fn run_device(ctx: Arc<Ctx>, mut dev: Device, start: Instant) {
    let a = &ctx.args;
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        a.seed ^ (dev.index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    let interval = a.interval.as_secs_f64();
    let mut next = start + Duration::from_secs_f64(first_delay(&mut rng, interval));
    loop {
        if next >= ctx.window.1 {
            return;
        }
        tokio::time::sleep_until(next.into()).await;
        let t = Instant::now();
        let (body, sent) =
            dev.next_checkin(&mut rng, a.state_change, a.result_rate, interval as u64);
        let Ok(mut headers) = json_headers(Some(&dev.token)) else {
            return;
        };
        if let Some(tag) = dev.etag.as_deref().and_then(|e| e.parse().ok()) {
            headers.insert(IF_NONE_MATCH, tag);
        }
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let (base, client) = ctx.pick();
        ctx.checkins_total.fetch_add(1, Ordering::Relaxed);
        let mut wait = interval * rng.random_range(JITTER.0..JITTER.1);
        let mut commands = Vec::new();
        match post(base, client, "/v1/checkin", headers, body).await {
            Ok((status, head, bytes, sample)) => {
                if status == 200 {
                    match serde_json::from_slice::<CheckInResponse>(&bytes) {
                        Ok(answer) => {
                            let etag = head
                                .get(ETAG)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            dev.absorb(etag, &answer);
                            commands = answer
                                .commands
                                .iter()
                                .map(|c| (c.id.clone(), c.kind))
                                .collect();
                        }
                        Err(_) => {
                            if let Some(s) = ctx.checkin_stats(t) {
                                lock(s).failed("bad-checkin-answer");
                            }
                        }
                    }
                } else if status == 304 {
                    dev.not_modified();
                } else if status == 503 {
                    let after = head
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or(1.0);
                    wait = wait.max(after);
                }
                if let Some(s) = ctx.checkin_stats(t) {
                    let mut s = lock(s);
                    s.answered(status, sample);
                    s.carried(sent.with_state, sent.results, commands.len());
                }
            }
            Err(kind) => {
                if let Some(s) = ctx.checkin_stats(t) {
                    lock(s).failed(kind);
                }
            }
        }
        for (id, kind) in commands {
            answer_command(&ctx, &dev, &id, kind).await;
        }
        next = t + Duration::from_secs_f64(wait);
    }
}

/// The client whose connections leave from `source` (the system's choice when `None`).
fn client(a: &Args, source: Option<std::net::IpAddr>) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .timeout(a.timeout)
        .connect_timeout(a.timeout)
        .local_address(source);
    if a.fresh_connections {
        b = b.pool_max_idle_per_host(0);
    }
    b.build().context("building the HTTP client")
}

/// The clients of one server: one per source address (`--source-addresses`).
fn clients_for(a: &Args, server: &str) -> Result<Vec<reqwest::Client>> {
    if a.source_addresses == 1 {
        return Ok(vec![client(a, None)?]);
    }
    let host = reqwest::Url::parse(server)
        .with_context(|| format!("server URL {server}"))?
        .host_str()
        .unwrap_or_default()
        .to_string();
    if !host.starts_with("127.") && host != "localhost" {
        bail!("--source-addresses needs servers on a loopback address; {server} is not");
    }
    (1..=a.source_addresses)
        .map(|k| client(a, Some(std::net::Ipv4Addr::new(127, 0, 0, k).into())))
        .collect()
}

async fn run(args: Args) -> Result<RunReport> {
    if args.devices == 0 {
        bail!("--devices must be at least 1");
    }
    if args.interval.is_zero() {
        bail!("--interval must be more than 0");
    }
    let secret = match &args.secret_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the enrollment secret {}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let clients = args
        .servers
        .iter()
        .map(|server| clients_for(&args, server))
        .collect::<Result<Vec<_>>>()?;
    let warmup = args.warmup.unwrap_or(args.interval).min(args.duration);
    let far = Instant::now() + Duration::from_secs(365 * 86_400);
    let mut ctx = Arc::new(Ctx {
        clients,
        next_server: AtomicUsize::new(0),
        checkins_total: AtomicUsize::new(0),
        window: (far, far),
        checkins: Mutex::new(Stats::default()),
        warmup_checkins: Mutex::new(Stats::default()),
        command_results: Mutex::new(Stats::default()),
        args,
    });
    let (tokens, enrolled_now, enroll) = enroll_all(&ctx, secret).await?;
    let missing = tokens.iter().filter(|t| t.is_none()).count();
    if missing > 0 {
        eprintln!("fleet-load: {missing} devices could not enroll; they do not check in");
    }
    let start = Instant::now();
    let window = (start + warmup, start + ctx.args.duration);
    Arc::get_mut(&mut ctx)
        .context("context still shared after enrollment")?
        .window = window;
    let a = &ctx.args;
    let mut devices = tokio::task::JoinSet::new();
    if !a.enroll_only {
        for (i, t) in tokens.into_iter().enumerate() {
            if let Some(token) = t {
                let dev = Device::new(i, token, a.state_bytes);
                devices.spawn(run_device(ctx.clone(), dev, start));
            }
        }
        while let Some(r) = devices.join_next().await {
            r?;
        }
    }
    let secs = (window.1 - window.0).as_secs_f64();
    let checkin = std::mem::take(&mut *lock(&ctx.checkins)).report(secs);
    let warmup_checkin =
        std::mem::take(&mut *lock(&ctx.warmup_checkins)).report((window.0 - start).as_secs_f64());
    let command_results = std::mem::take(&mut *lock(&ctx.command_results)).report(secs);
    let interval_s = a.interval.as_secs_f64();
    Ok(RunReport {
        servers: a.servers.clone(),
        devices: a.devices,
        interval_s,
        equivalent_devices_at_60s: a.devices as f64 * 60.0 / interval_s,
        expected_rate_per_s: (a.devices - missing) as f64 / interval_s,
        measured_window_s: if a.enroll_only { 0.0 } else { secs },
        checkins_total: ctx.checkins_total.load(Ordering::Relaxed),
        enrolled_now,
        enroll,
        checkin,
        warmup_checkin,
        command_results,
    })
}

fn main() -> std::process::ExitCode {
    std::sync::LazyLock::force(&EPOCH);
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let out = args.out.clone();
    let result = rt.block_on(run(args)).and_then(|r| {
        let text = serde_json::to_string_pretty(&r)?;
        println!("{text}");
        if let Some(p) = out {
            std::fs::write(&p, format!("{text}\n"))
                .with_context(|| format!("writing {}", p.display()))?;
        }
        Ok(())
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// With first check-ins drawn by `first_delay`, the rate is steady from the start: every
    /// tenth of an interval over the first three gets the mean's share within 5 %.
    #[test]
    fn first_delays_give_a_steady_rate_from_the_start() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (devices, interval, bins) = (40_000, 60.0, 30);
        let mut counts = vec![0u32; bins];
        for _ in 0..devices {
            let mut t = first_delay(&mut rng, interval);
            while t < interval * 3.0 {
                counts[(t / (interval / 10.0)) as usize] += 1;
                t += interval * rng.random_range(JITTER.0..JITTER.1);
            }
        }
        let mean = f64::from(devices) / 10.0;
        for (i, c) in counts.iter().enumerate() {
            let r = f64::from(*c) / mean;
            assert!(
                (0.95..1.05).contains(&r),
                "tenth {i}: {c} check-ins, {r:.3} × the mean"
            );
        }
    }
}
