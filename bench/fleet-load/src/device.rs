//! One simulated device: its identity, its app-defined state document and the check-in body it
//! sends, following `docs/fleet.md` (full state on first contact or after a change, only the
//! digest otherwise; update results re-sent until the server acknowledges them).

use formats::fleet::{CheckIn, CheckInResponse, UpdateResult};
use rand::Rng;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// A device's memory between check-ins.
pub struct Device {
    /// Index in this run (0-based); names the device.
    pub index: usize,
    /// Bearer token from `/v1/enroll`.
    pub token: String,
    /// ETag of the last 200 answer, sent as `If-None-Match`.
    pub etag: Option<String>,
    version: (u64, u64, u64),
    state: Value,
    state_bytes: usize,
    /// Digest the server said it holds (from its last 200 answer).
    server_digest: Option<String>,
    next_seq: u64,
    pending: Vec<UpdateResult>,
    uptime_s: u64,
}

/// What one check-in carried, for the report.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sent {
    /// The body held the state document.
    pub with_state: bool,
    /// Number of update results in the body.
    pub results: usize,
}

/// The device id of index `i` under `prefix`: `[A-Za-z0-9._:-]`, as the protocol requires.
pub fn device_id(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:07}")
}

fn tree_digest(v: (u64, u64, u64)) -> String {
    blake3::hash(format!("tree {}.{}.{}", v.0, v.1, v.2).as_bytes())
        .to_hex()
        .to_string()
}

/// A state document of about `target` bytes of compact JSON: what a game or kiosk app might
/// report (session, settings, plugins, counters).
fn state_doc(index: usize, uptime_s: u64, players: u64, target: usize) -> Value {
    let mut doc = json!({
        "app_build": "2026.11.25-r3",
        "uptime_s": uptime_s,
        "session": {"players": players, "map": format!("map-{:02}", index % 37), "mode": "coop"},
        "settings": {"graphics": "high", "vsync": true, "resolution": "1920x1080",
                     "language": "en", "telemetry": true, "audio_device": "HDA Intel PCH"},
        "hardware": {"gpu": "GeForce RTX 3060", "driver": "550.120", "ram_mb": 16384,
                     "cpu": "AMD Ryzen 5 5600X 6-Core Processor"},
        "counters": {"crashes_7d": index % 3, "sessions_7d": 20 + index % 11,
                     "frames_dropped": uptime_s / 97},
        "last_error": Value::Null,
        "plugins": [],
    });
    let mut n = 0usize;
    while serde_json::to_vec(&doc).map_or(usize::MAX, |v| v.len()) < target && n < 512 {
        if let Some(Value::Array(p)) = doc.get_mut("plugins") {
            p.push(json!({"name": format!("plugin-{n:03}"), "version": format!("1.{}.{}", n % 7, n % 13),
                          "enabled": !n.is_multiple_of(5)}));
        }
        n += 1;
    }
    doc
}

fn digest_of(state: &Value) -> String {
    blake3::hash(&serde_json::to_vec(state).unwrap_or_default())
        .to_hex()
        .to_string()
}

impl Device {
    /// A device at version 1.0.0 with a fresh state document of about `state_bytes` bytes.
    pub fn new(index: usize, token: String, state_bytes: usize) -> Self {
        let uptime_s = 3600 + (index as u64 % 5000);
        Device {
            index,
            token,
            etag: None,
            version: (1, 0, 0),
            state: state_doc(index, uptime_s, 1, state_bytes),
            state_bytes,
            server_digest: None,
            next_seq: 1,
            pending: Vec::new(),
            uptime_s,
        }
    }

    /// The next check-in body. With probability `state_change` the state document changes; with
    /// probability `result_rate` an update finished since the last check-in.
    pub fn next_checkin(
        &mut self,
        rng: &mut impl Rng,
        state_change: f64,
        result_rate: f64,
        elapsed_s: u64,
    ) -> (CheckIn, Sent) {
        self.uptime_s += elapsed_s;
        if rng.random_bool(state_change.clamp(0.0, 1.0)) {
            self.state = state_doc(
                self.index,
                self.uptime_s,
                rng.random_range(1..8),
                self.state_bytes,
            );
        }
        if rng.random_bool(result_rate.clamp(0.0, 1.0)) && self.pending.len() < 32 {
            let from = self.version;
            let ok = rng.random_bool(0.95);
            let to = (from.0, from.1, from.2 + 1);
            let finished_at = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| "2026-11-25T00:00:00Z".into());
            self.pending.push(UpdateResult {
                seq: self.next_seq,
                finished_at,
                from: Some(format!("{}.{}.{}", from.0, from.1, from.2)),
                to: format!("{}.{}.{}", to.0, to.1, to.2),
                method: "incremental".into(),
                bytes: rng.random_range(2_000..400_000),
                seconds: rng.random_range(0.05..3.0),
                ok,
                error_kind: (!ok).then(|| "network".to_string()),
                error_message: (!ok).then(|| "connection reset by peer (simulated)".to_string()),
                started_by: Some("agent".into()),
            });
            self.next_seq += 1;
            if ok {
                self.version = to;
            }
        }
        let digest = digest_of(&self.state);
        let send_state = self.server_digest.as_deref() != Some(digest.as_str());
        let body = CheckIn {
            version: Some(format!(
                "{}.{}.{}",
                self.version.0, self.version.1, self.version.2
            )),
            tree_digest: Some(tree_digest(self.version)),
            channel: Some("stable".into()),
            attrs: BTreeMap::from([
                (
                    "region".to_string(),
                    ["eu", "us", "ap"][self.index % 3].to_string(),
                ),
                ("platform".to_string(), "linux-x86_64".to_string()),
            ]),
            results: self.pending.clone(),
            free_disk: Some(50_000_000_000 - (self.index as u64 % 1000) * 1_000_000),
            os: Some("linux".into()),
            arch: Some("x86_64".into()),
            hostname: Some(format!("host-{:07}", self.index)),
            agent_version: Some(env!("CARGO_PKG_VERSION").into()),
            state: send_state.then(|| self.state.clone()),
            state_digest: Some(digest),
        };
        let sent = Sent {
            with_state: send_state,
            results: body.results.len(),
        };
        (body, sent)
    }

    /// Takes in a 200 answer: its ETag, the digest the server holds, acknowledged results.
    pub fn absorb(&mut self, etag: Option<String>, answer: &CheckInResponse) {
        self.etag = etag;
        self.server_digest = answer.state_digest.clone();
        if let Some(acked) = answer.acked_result_seq {
            self.pending.retain(|r| r.seq > acked);
        }
    }

    /// A 304 answer: nothing changed on the server's side, so the results sent are not yet
    /// acknowledged by this answer (they are re-sent next time, idempotently).
    pub fn not_modified(&mut self) {}

    /// The state document (for `report-state` commands).
    pub fn state(&self) -> &Value {
        &self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn bodies_are_valid_and_the_state_is_sent_until_the_server_holds_it() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut d = Device::new(3, "t".into(), 1500);
        let (c, sent) = d.next_checkin(&mut rng, 0.0, 1.0, 60);
        let bytes = serde_json::to_vec(&c).expect("serialises");
        formats::fleet::parse::<CheckIn>(&bytes).expect("a valid check-in");
        assert!(sent.with_state && sent.results == 1);
        let state_len = serde_json::to_vec(&c.state).expect("state").len();
        assert!((1500..2000).contains(&state_len), "state of {state_len} B");

        let answer = CheckInResponse {
            protocol: 1,
            status: formats::fleet::DeviceStatus::Active,
            directive: None,
            commands: vec![],
            poll_interval_secs: 60,
            acked_result_seq: Some(1),
            state_digest: c.state_digest.clone(),
        };
        d.absorb(Some("\"x\"".into()), &answer);
        let (c2, sent2) = d.next_checkin(&mut rng, 0.0, 0.0, 60);
        assert!(!sent2.with_state && sent2.results == 0 && c2.state.is_none());
        let r = &c.results[0];
        let now = if r.ok { Some(&r.to) } else { r.from.as_ref() };
        assert_eq!(c2.version.as_ref(), now);
        assert!(serde_json::to_vec(&c2).expect("serialises").len() < 700);
    }
}
