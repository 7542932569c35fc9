//! The fleet protocol: what a device and `patch-server` say to each other (`docs/fleet.md`).
//!
//! Plain data with serde, shared by the server (`patch-server`) and the agent inside
//! `patch-apply`. Every document a peer sends is untrusted: parse it with [`parse`], which
//! bounds the body, refuses unknown shapes and checks every field's length and alphabet, naming
//! the field that broke a rule ([`FleetError::field`]).
//!
//! The server only *names* a release ([`Directive`]); a device installs only what the signed
//! repository offers, so nothing here carries bytes to install.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;

/// Protocol version carried in every path (`/v1/...`) and in [`CheckInResponse::protocol`].
pub const PROTOCOL: u32 = 1;

/// Largest JSON body a device may send (enroll, check-in, command result), in bytes.
pub const MAX_BODY: usize = 256 * 1024;
/// Largest app-defined state document, in bytes of its compact JSON.
pub const MAX_STATE: usize = 64 * 1024;
/// Longest short string field (names, versions, hostnames, kinds), in bytes.
pub const MAX_SHORT: usize = 128;
/// Longest free-text field (error messages, command messages), in bytes.
pub const MAX_TEXT: usize = 4096;
/// Most targeting attributes on one device.
pub const MAX_ATTRS: usize = 32;
/// Most update results in one check-in (older ones stay queued on the device).
pub const MAX_RESULTS: usize = 32;
/// Largest single upload (a log or crash file), in bytes.
pub const MAX_UPLOAD: u64 = 64 * 1024 * 1024;

/// `s` cut to at most `max` bytes at a character boundary (for free text sent to or kept by the
/// server within a field's bound).
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A protocol document that breaks a rule, with the field that broke it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FleetError {
    /// Dotted path of the offending field (`state`, `results[2].error_message`), or `body`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
    /// Whether the problem is a size bound (HTTP 413) rather than a malformed value (400).
    pub too_large: bool,
}

impl FleetError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FleetError {
            field: field.into(),
            reason: reason.into(),
            too_large: false,
        }
    }
    fn large(field: impl Into<String>, limit: usize) -> Self {
        FleetError {
            field: field.into(),
            reason: format!("longer than the limit of {limit} bytes"),
            too_large: true,
        }
    }
}

/// A document of the protocol that can check its own fields.
pub trait Validate {
    /// Checks every field's bounds and alphabet.
    fn validate(&self) -> Result<(), FleetError>;
}

/// Parses and validates a device-sent document of at most [`MAX_BODY`] bytes.
pub fn parse<T: DeserializeOwned + Validate>(body: &[u8]) -> Result<T, FleetError> {
    if body.len() > MAX_BODY {
        return Err(FleetError::large("body", MAX_BODY));
    }
    // serde also reads a struct from a JSON array of its fields in order; the protocol has
    // one encoding only.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(FleetError::new("body", "must be a JSON object"));
    }
    let doc: T = serde_json::from_slice(body).map_err(|e| {
        // serde_json names the unknown/missing field in its message; keep it.
        FleetError::new("body", format!("invalid JSON: {e}"))
    })?;
    doc.validate()?;
    Ok(doc)
}

/// Checks an identifier: 1..=`MAX_SHORT` bytes of `[A-Za-z0-9._:-]`, not starting with `.`.
pub fn check_id(field: &str, s: &str) -> Result<(), FleetError> {
    if s.is_empty() {
        return Err(FleetError::new(field, "must not be empty"));
    }
    if s.len() > MAX_SHORT {
        return Err(FleetError::large(field, MAX_SHORT));
    }
    if s.starts_with('.')
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    {
        return Err(FleetError::new(
            field,
            "only letters, digits and . _ : - are allowed",
        ));
    }
    Ok(())
}

/// Checks a short free string (hostname, OS name): at most `MAX_SHORT` bytes, no control chars.
pub fn check_short(field: &str, s: &str) -> Result<(), FleetError> {
    check_text_len(field, s, MAX_SHORT)
}

fn check_text_len(field: &str, s: &str, max: usize) -> Result<(), FleetError> {
    if s.len() > max {
        return Err(FleetError::large(field, max));
    }
    if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(FleetError::new(field, "control characters are not allowed"));
    }
    Ok(())
}

fn check_opt(
    field: &str,
    s: &Option<String>,
    f: fn(&str, &str) -> Result<(), FleetError>,
) -> Result<(), FleetError> {
    match s {
        Some(s) => f(field, s),
        None => Ok(()),
    }
}

fn check_version(field: &str, s: &str) -> Result<(), FleetError> {
    check_short(field, s)?;
    crate::Version::parse(s).map_err(|e| FleetError::new(field, format!("not a version: {e}")))?;
    Ok(())
}

fn check_digest(field: &str, s: &str) -> Result<(), FleetError> {
    if s.len() != 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(FleetError::new(
            field,
            "must be 64 lowercase hex digits (a BLAKE3 tree digest)",
        ));
    }
    Ok(())
}

/// `POST /v1/enroll`: a device introduces itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The app's name as registered on the server (`patch-server app add NAME`).
    pub app: String,
    /// An id the device generated once and keeps (e.g. 32 random hex digits).
    pub device_id: String,
    /// The app's enrollment secret; absent when the app uses administrator approval.
    #[serde(default)]
    pub secret: Option<String>,
    /// The device's host name, for people reading the inventory.
    #[serde(default)]
    pub hostname: Option<String>,
}

impl Validate for EnrollRequest {
    fn validate(&self) -> Result<(), FleetError> {
        check_id("app", &self.app)?;
        check_id("device_id", &self.device_id)?;
        check_opt("secret", &self.secret, check_short)?;
        check_opt("hostname", &self.hostname, check_short)
    }
}

/// Whether a device may act yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceStatus {
    /// Enrolled and allowed to receive directives and commands.
    Active,
    /// Waiting for an administrator's approval: check-ins are recorded, nothing is directed.
    Pending,
}

/// Answer to [`EnrollRequest`]: the device's bearer token, shown once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The device id, as sent.
    pub device_id: String,
    /// 256 random bits, hex; the server keeps only its hash. Sent as `Authorization: Bearer`.
    pub token: String,
    /// Active, or pending an administrator's approval.
    pub status: DeviceStatus,
    /// Seconds until the first check-in.
    pub poll_interval_secs: u64,
}

/// How an update attempt went, as the device's updater saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateResult {
    /// Device-local sequence number, increasing by one per attempt; makes re-sends idempotent.
    pub seq: u64,
    /// When the attempt finished (RFC 3339).
    pub finished_at: String,
    /// Version before the attempt, if one was recognised.
    #[serde(default)]
    pub from: Option<String>,
    /// Version the attempt aimed at.
    pub to: String,
    /// `incremental`, `repair` or `installer`.
    pub method: String,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Seconds the attempt took.
    pub seconds: f64,
    /// Whether the target release is now installed.
    pub ok: bool,
    /// On failure, a stable kind (`verify`, `network`, `disk`, `refused`, `interrupted`...).
    #[serde(default)]
    pub error_kind: Option<String>,
    /// On failure, the updater's message.
    #[serde(default)]
    pub error_message: Option<String>,
    /// Who started it: `agent`, `cli`, `library`.
    #[serde(default)]
    pub started_by: Option<String>,
}

impl UpdateResult {
    fn validate_at(&self, at: &str) -> Result<(), FleetError> {
        let f = |name: &str| format!("{at}.{name}");
        check_short(&f("finished_at"), &self.finished_at)?;
        time::OffsetDateTime::parse(
            &self.finished_at,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|_| FleetError::new(f("finished_at"), "not an RFC 3339 time"))?;
        if let Some(v) = &self.from {
            check_version(&f("from"), v)?;
        }
        check_version(&f("to"), &self.to)?;
        check_id(&f("method"), &self.method)?;
        if !self.seconds.is_finite() || self.seconds < 0.0 {
            return Err(FleetError::new(
                f("seconds"),
                "must be a finite number >= 0",
            ));
        }
        check_opt(&f("error_kind"), &self.error_kind, check_id)?;
        if let Some(m) = &self.error_message {
            check_text_len(&f("error_message"), m, MAX_TEXT)?;
        }
        check_opt(&f("started_by"), &self.started_by, check_id)
    }
}

/// `POST /v1/checkin` (bearer device token): what is installed and how things went.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckIn {
    /// Installed version as the updater recognises it from the files, if any.
    #[serde(default)]
    pub version: Option<String>,
    /// BLAKE3 digest of the installed tree (the install record's `tree_digest`), if known.
    #[serde(default)]
    pub tree_digest: Option<String>,
    /// Release channel the device follows (`stable` when absent).
    #[serde(default)]
    pub channel: Option<String>,
    /// Targeting attributes (`region=eu`, `platform=linux-x86_64`).
    #[serde(default)]
    pub attrs: BTreeMap<String, String>,
    /// Update attempts not yet acknowledged by the server, oldest first.
    #[serde(default)]
    pub results: Vec<UpdateResult>,
    /// Free bytes on the app dir's file system.
    #[serde(default)]
    pub free_disk: Option<u64>,
    /// Operating system (`linux`, `windows`, `macos`).
    #[serde(default)]
    pub os: Option<String>,
    /// CPU architecture (`x86_64`, `aarch64`).
    #[serde(default)]
    pub arch: Option<String>,
    /// Host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Agent version (`patch-apply` crate version).
    #[serde(default)]
    pub agent_version: Option<String>,
    /// The app-defined state document; send it when it changed (see `state_digest`).
    #[serde(default)]
    pub state: Option<serde_json::Value>,
    /// BLAKE3 of the compact JSON of the state the device last sent; lets an idle check-in
    /// omit `state` while saying it is unchanged.
    #[serde(default)]
    pub state_digest: Option<String>,
}

impl Validate for CheckIn {
    fn validate(&self) -> Result<(), FleetError> {
        check_opt("version", &self.version, check_version)?;
        check_opt("tree_digest", &self.tree_digest, check_digest)?;
        check_opt("channel", &self.channel, check_id)?;
        if self.attrs.len() > MAX_ATTRS {
            return Err(FleetError {
                field: "attrs".into(),
                reason: format!("more than {MAX_ATTRS} attributes"),
                too_large: true,
            });
        }
        for (k, v) in &self.attrs {
            check_id(&format!("attrs.{k}"), k)?;
            check_short(&format!("attrs.{k}"), v)?;
        }
        if self.results.len() > MAX_RESULTS {
            return Err(FleetError {
                field: "results".into(),
                reason: format!("more than {MAX_RESULTS} results in one check-in"),
                too_large: true,
            });
        }
        for (i, r) in self.results.iter().enumerate() {
            r.validate_at(&format!("results[{i}]"))?;
        }
        check_opt("os", &self.os, check_short)?;
        check_opt("arch", &self.arch, check_short)?;
        check_opt("hostname", &self.hostname, check_short)?;
        check_opt("agent_version", &self.agent_version, check_short)?;
        if let Some(s) = &self.state {
            let len = serde_json::to_vec(s).map(|v| v.len()).unwrap_or(usize::MAX);
            if len > MAX_STATE {
                return Err(FleetError::large("state", MAX_STATE));
            }
        }
        check_opt("state_digest", &self.state_digest, check_digest)
    }
}

/// Why the server names a release for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirectiveReason {
    /// The newest release on the device's channel.
    Channel,
    /// An administrator pinned the device (or a tag it has) at this release.
    Pin,
    /// A staged rollout includes the device.
    Rollout,
    /// An administrator pushed this release to the device.
    Push,
}

/// The release a device should be on. The device installs it only if its verified repository
/// offers it and its own policy allows the move (e.g. no downgrade unless allowed or signed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directive {
    /// Release version.
    pub version: String,
    /// Why this release.
    pub reason: DirectiveReason,
    /// Rollout id when `reason` is `rollout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
}

/// What a command asks a device to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandKind {
    /// Post the app's state document as the result.
    ReportState,
    /// Upload the files the agent is configured to collect (logs, crash files).
    UploadLogs,
    /// Check and install the named release now, ignoring the maintenance window.
    UpdateNow,
    /// Restart the supervised app.
    RestartApp,
    /// Change the poll interval (`args.secs`).
    SetInterval,
}

impl CommandKind {
    /// The kebab-case name used on the wire and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::ReportState => "report-state",
            CommandKind::UploadLogs => "upload-logs",
            CommandKind::UpdateNow => "update-now",
            CommandKind::RestartApp => "restart-app",
            CommandKind::SetInterval => "set-interval",
        }
    }

    /// Parses a kebab-case name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            CommandKind::ReportState,
            CommandKind::UploadLogs,
            CommandKind::UpdateNow,
            CommandKind::RestartApp,
            CommandKind::SetInterval,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A queued command delivered in a check-in answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Server-assigned id; the result is posted to `/v1/commands/{id}/result`.
    pub id: String,
    /// What to do.
    pub kind: CommandKind,
    /// Arguments (`{"secs": 30}` for `set-interval`), `{}` otherwise.
    #[serde(default)]
    pub args: serde_json::Value,
    /// When the server stops offering it (RFC 3339).
    pub expires_at: String,
}

/// Answer to a [`CheckIn`]. Sent with an `ETag` over everything but `server_time`; a
/// check-in carrying `If-None-Match` with that tag gets `304 Not Modified` and no body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckInResponse {
    /// [`PROTOCOL`].
    pub protocol: u32,
    /// Active or pending approval.
    pub status: DeviceStatus,
    /// The release this device should be on, or none (stay where you are).
    #[serde(default)]
    pub directive: Option<Directive>,
    /// Commands to carry out, oldest first.
    #[serde(default)]
    pub commands: Vec<Command>,
    /// Seconds until the next check-in (before the device's jitter).
    pub poll_interval_secs: u64,
    /// Highest [`UpdateResult::seq`] stored; the device may forget results up to it.
    #[serde(default)]
    pub acked_result_seq: Option<u64>,
    /// Digest of the state document the server holds, so the device can omit an unchanged one.
    #[serde(default)]
    pub state_digest: Option<String>,
}

/// Outcome of a command, posted by the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandOutcome {
    /// Done.
    Ok,
    /// Tried and failed (`message` says why).
    Failed,
    /// Refused by the device's policy (a downgrade it does not allow, an unknown command...).
    Rejected,
}

/// `POST /v1/commands/{id}/result` (bearer device token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandResult {
    /// How it went.
    pub outcome: CommandOutcome,
    /// Human-readable detail (what was skipped, why it failed).
    #[serde(default)]
    pub message: Option<String>,
    /// Structured result: the state document for `report-state`, upload ids for `upload-logs`.
    #[serde(default)]
    pub data: Option<serde_json::Value>,
}

impl Validate for CommandResult {
    fn validate(&self) -> Result<(), FleetError> {
        if let Some(m) = &self.message {
            check_text_len("message", m, MAX_TEXT)?;
        }
        if let Some(d) = &self.data {
            let len = serde_json::to_vec(d).map(|v| v.len()).unwrap_or(usize::MAX);
            if len > MAX_STATE {
                return Err(FleetError::large("data", MAX_STATE));
            }
        }
        Ok(())
    }
}

/// Answer to `PUT /v1/uploads`: where the server keeps the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadReceipt {
    /// Server-assigned upload id.
    pub id: String,
    /// Bytes stored.
    pub size: u64,
    /// BLAKE3 of the bytes stored, hex.
    pub blake3: String,
}

/// Most crash files one device may upload in an hour (`PUT /v1/uploads?crash=ID`); more are
/// refused with 429 and `Retry-After` (the agent tries again later, and after its last try
/// lists the file in the crash report without an upload id).
pub const MAX_CRASH_UPLOADS_PER_HOUR: usize = 32;

/// A file attached to a crash report (`state.supervisor.crashes[].files` of the state
/// document): one that appeared or changed in the agent's crash directory while the crashed
/// process ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashFile {
    /// Its path relative to the crash directory.
    pub name: String,
    /// Its size in bytes when the crash was recorded.
    pub size: u64,
    /// BLAKE3 of its bytes when the crash was recorded, hex.
    pub blake3: String,
    /// The server's upload id once uploaded (`PUT /v1/uploads?crash=ID&name=NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<String>,
    /// Why it was not uploaded (the server refused it, an older server without crash uploads,
    /// the file changed since the crash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Error body of every 4xx/5xx answer, device and admin API alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// The request field at fault, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good_checkin() -> CheckIn {
        CheckIn {
            version: Some("1.2.0".into()),
            tree_digest: Some("ab".repeat(32)),
            channel: Some("stable".into()),
            attrs: [("region".to_string(), "eu".to_string())].into(),
            results: vec![UpdateResult {
                seq: 1,
                finished_at: "2026-11-25T10:00:00Z".into(),
                from: Some("1.1.0".into()),
                to: "1.2.0".into(),
                method: "incremental".into(),
                bytes: 1000,
                seconds: 0.5,
                ok: true,
                error_kind: None,
                error_message: None,
                started_by: Some("cli".into()),
            }],
            state: Some(serde_json::json!({"players": 3})),
            ..CheckIn::default()
        }
    }

    #[test]
    fn a_good_checkin_round_trips() {
        let c = good_checkin();
        let bytes = serde_json::to_vec(&c).unwrap();
        assert_eq!(parse::<CheckIn>(&bytes).unwrap(), c);
    }

    #[test]
    fn bad_fields_are_named() {
        let mut c = good_checkin();
        c.results[0].to = "not a version".into();
        let e = parse::<CheckIn>(&serde_json::to_vec(&c).unwrap()).unwrap_err();
        assert_eq!(e.field, "results[0].to");
        assert!(!e.too_large);

        let mut c = good_checkin();
        c.state = Some(serde_json::json!({"blob": "x".repeat(MAX_STATE)}));
        let e = parse::<CheckIn>(&serde_json::to_vec(&c).unwrap()).unwrap_err();
        assert_eq!((e.field.as_str(), e.too_large), ("state", true));

        let e = parse::<CheckIn>(br#"{"version": "1.0.0", "evil": 1}"#).unwrap_err();
        assert_eq!(e.field, "body");
        assert!(e.reason.contains("evil"), "{e}");

        let e = parse::<EnrollRequest>(br#"{"app": "a/../b", "device_id": "d"}"#).unwrap_err();
        assert_eq!(e.field, "app");

        let e = parse::<CheckIn>(br#"["1.0.0"]"#).unwrap_err();
        assert_eq!((e.field.as_str(), e.too_large), ("body", false));

        let big = vec![b' '; MAX_BODY + 1];
        assert!(parse::<CheckIn>(&big).unwrap_err().too_large);
    }

    #[test]
    fn command_kinds_round_trip() {
        for s in [
            "report-state",
            "upload-logs",
            "update-now",
            "restart-app",
            "set-interval",
        ] {
            assert_eq!(CommandKind::parse(s).unwrap().as_str(), s);
        }
        assert!(CommandKind::parse("rm-rf").is_none());
    }
}
