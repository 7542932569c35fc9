//! Delivering notifications from the outbox (`alert_deliveries`): every server instance runs
//! [`spawn`]'s task, which claims due rows with a lease (`UPDATE ... WHERE claimed_until <
//! now`), posts or mails them, marks them done, and retries failures with exponential backoff
//! ([`backoff`]) until [`give_up`] says to mark them failed.
//!
//! **Invariant:** nothing here runs inside a request: a check-in only writes outbox rows, so a
//! dead webhook or SMTP server never slows a device down.

use std::time::Duration;

use futures_util::future::join_all;
use hmac::{Hmac, Mac};
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::Sha256;
use sqlx::Row;

use super::condition::{cut, AlertEvent};
use super::store::sweep_silent;
use crate::db::Db;
use crate::util::{new_id, now_ms, rfc3339};

/// Why the alert engine could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AlertError {
    /// `--smtp-url` is not usable.
    #[error("--smtp-url {url}: {reason}")]
    SmtpUrl {
        /// The URL (password redacted).
        url: String,
        /// Why.
        reason: String,
    },
    /// `--smtp-from` is not an address.
    #[error("--smtp-from {addr:?}: {reason}")]
    SmtpFrom {
        /// What was given.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("webhook client: {0}")]
    Http(#[from] reqwest::Error),
}

/// The SMTP server e-mail alerts go through.
#[derive(Clone)]
pub struct SmtpConfig {
    /// `smtp://host:port` (plain, for a local relay), `smtp://host:587?tls=required`
    /// (STARTTLS) or `smtps://host:465` (TLS); user name in the URL when the server wants one.
    pub url: String,
    /// The `From` address.
    pub from: String,
    /// Password (from `PATCHKIT_SMTP_PASSWORD`), with the URL's user name or else `from`.
    pub password: Option<String>,
    /// PEM certificates trusted, besides the public roots, for the SMTP server's TLS
    /// certificate (`--smtp-ca-cert`: a private CA or a self-signed relay); only with a TLS
    /// URL.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for SmtpConfig {
    // The password and a password in the URL never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("url", &redact_password(&self.url))
            .field("from", &self.from)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .finish()
    }
}

/// How notifications are delivered and retried.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    /// SMTP for e-mail destinations; e-mail notifications fail (and are retried) without it.
    pub smtp: Option<SmtpConfig>,
    /// Delay before the first retry; doubled after each failure.
    pub retry_base: Duration,
    /// Longest delay between retries.
    pub retry_cap: Duration,
    /// Attempts before a notification is marked failed.
    pub max_attempts: u32,
    /// Age after which a notification that still fails is marked failed.
    pub give_up_after: Duration,
    /// Time limit of one webhook request or SMTP session.
    pub timeout: Duration,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        DeliveryOptions {
            smtp: None,
            retry_base: Duration::from_secs(30),
            retry_cap: Duration::from_secs(4 * 3600),
            max_attempts: 10,
            give_up_after: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Options of the alert engine of `patch-server serve`.
#[derive(Debug, Clone)]
pub struct AlertOptions {
    /// A device is silent after this many of its poll intervals without a check-in.
    pub silent_after: u32,
    /// How often the outbox is polled.
    pub tick: Duration,
    /// Resolved alerts older than this are deleted with their notifications.
    pub retain: Duration,
    /// Delivery.
    pub delivery: DeliveryOptions,
}

impl Default for AlertOptions {
    fn default() -> Self {
        AlertOptions {
            silent_after: 3,
            tick: Duration::from_secs(1),
            retain: Duration::from_secs(30 * 86_400),
            delivery: DeliveryOptions::default(),
        }
    }
}

/// The delay before attempt `attempts + 1` after `attempts` failed ones:
/// `base * 2^(attempts - 1)`, at most `cap`.
pub fn backoff(attempts: u32, base: Duration, cap: Duration) -> Duration {
    formats::retry::exponential(attempts, base, cap)
}

/// Whether a notification that failed `attempts` times and was created at `created_ms` is
/// given up at `now`.
pub fn give_up(attempts: u32, created_ms: i64, now: i64, o: &DeliveryOptions) -> bool {
    let age = i64::try_from(o.give_up_after.as_millis()).unwrap_or(i64::MAX);
    attempts >= o.max_attempts || now.saturating_sub(created_ms) >= age
}

/// `sha256=<hex HMAC-SHA256 of body under secret>`: the `X-Patchkit-Signature` header.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Sends notifications: an HTTP client for webhooks and an SMTP transport for e-mail.
pub struct Notifier {
    http: reqwest::Client,
    smtp: Option<(AsyncSmtpTransport<Tokio1Executor>, Mailbox)>,
    opts: DeliveryOptions,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("smtp", &self.smtp.is_some())
            .field("opts", &self.opts)
            .finish()
    }
}

impl Notifier {
    /// A notifier with `opts` (checks the SMTP URL and `From` address).
    pub fn new(opts: DeliveryOptions) -> Result<Notifier, AlertError> {
        let http = reqwest::Client::builder()
            .timeout(opts.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("patch-server/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let smtp = match &opts.smtp {
            None => None,
            Some(c) => Some(smtp_transport(c, opts.timeout)?),
        };
        Ok(Notifier { http, smtp, opts })
    }

    async fn webhook(&self, url: &str, secret: &str, ev: &AlertEvent) -> Result<(), String> {
        let body = serde_json::to_vec(ev).map_err(|e| e.to_string())?;
        let r = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Patchkit-Signature", signature(secret, &body))
            .header("X-Patchkit-Event", &ev.event)
            .header("X-Patchkit-Delivery", &ev.delivery_id)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("{}", without_url(e)))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("webhook answered HTTP {}", r.status().as_u16()))
        }
    }

    async fn email(&self, to: &str, ev: &AlertEvent) -> Result<(), String> {
        let (transport, from) = self
            .smtp
            .as_ref()
            .ok_or("no SMTP server configured (serve --smtp-url)")?;
        let to: Mailbox = to.parse().map_err(|e| format!("address {to:?}: {e}"))?;
        let msg = Message::builder()
            .from(from.clone())
            .to(to)
            .subject(ev.mail_subject())
            .header(ContentType::TEXT_PLAIN)
            .body(ev.mail_body())
            .map_err(|e| format!("message: {e}"))?;
        transport
            .send(msg)
            .await
            .map(|_| ())
            .map_err(|e| format!("smtp: {e}"))
    }
}

fn without_url(e: reqwest::Error) -> reqwest::Error {
    // The URL may carry a secret (some services put one in the path).
    e.without_url()
}

/// A URL with its password replaced by `***`, for messages.
fn redact_password(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(not a URL)".into(),
    }
}

fn smtp_transport(
    c: &SmtpConfig,
    timeout: Duration,
) -> Result<(AsyncSmtpTransport<Tokio1Executor>, Mailbox), AlertError> {
    let bad_url = |reason: String| AlertError::SmtpUrl {
        url: redact_password(&c.url),
        reason,
    };
    let from: Mailbox = c.from.parse().map_err(|e| AlertError::SmtpFrom {
        addr: c.from.clone(),
        reason: format!("{e}"),
    })?;
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::from_url(&c.url)
        .map_err(|e| bad_url(e.to_string()))?
        .timeout(Some(timeout));
    if let Some(pem) = &c.ca_pem {
        b = b.tls(tls_with_ca(&c.url, pem).map_err(bad_url)?);
    }
    if let Some(pass) = &c.password {
        let user = reqwest::Url::parse(&c.url)
            .ok()
            .map(|u| u.username().to_string())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| from.email.to_string());
        b = b.credentials(Credentials::new(user, pass.clone()));
    }
    Ok((b.build(), from))
}

/// The TLS mode of an SMTP URL (`smtps://`, `?tls=required`, `?tls=opportunistic`) with `pem`'s
/// certificates trusted besides the public roots.
fn tls_with_ca(url: &str, pem: &[u8]) -> Result<Tls, String> {
    let u = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    let tls_query = u
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned());
    let mode: fn(TlsParameters) -> Tls = match (u.scheme(), tls_query.as_deref()) {
        ("smtps", _) => Tls::Wrapper,
        ("smtp", Some("required")) => Tls::Required,
        ("smtp", Some("opportunistic")) => Tls::Opportunistic,
        _ => {
            return Err(
                "--smtp-ca-cert needs a TLS URL (smtps://HOST or smtp://HOST?tls=required)".into(),
            )
        }
    };
    let host = u.host_str().ok_or("no host")?.to_string();
    // lettre accepts a PEM file without any certificate in it; that trusts nothing new.
    if !String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err("--smtp-ca-cert holds no PEM certificate".into());
    }
    let cert = Certificate::from_pem(pem)
        .map_err(|e| format!("--smtp-ca-cert is not a PEM certificate: {e}"))?;
    let params = TlsParameters::builder(host)
        .add_root_certificate(cert)
        .build_rustls()
        .map_err(|e| format!("TLS settings: {e}"))?;
    Ok(mode(params))
}

/// A claimed notification with what delivering it needs.
struct Claimed {
    id: String,
    attempts: u32,
    created_ms: i64,
    kind: String,
    target: Option<String>,
    secret: Option<String>,
    event: AlertEvent,
}

fn claimed_from(r: &sqlx::any::AnyRow) -> sqlx::Result<Claimed> {
    let opened_ms: i64 = r.try_get("opened_ms")?;
    let resolved_ms: Option<i64> = r.try_get("resolved_ms")?;
    let id: String = r.try_get("id")?;
    Ok(Claimed {
        attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
        created_ms: r.try_get("created_ms")?,
        kind: r.try_get("kind")?,
        target: r.try_get("dest_target")?,
        secret: r.try_get("secret")?,
        event: AlertEvent {
            event: r.try_get("event")?,
            alert_id: r.try_get("alert")?,
            delivery_id: id.clone(),
            condition: r.try_get("alert_kind")?,
            key: r.try_get("alert_key")?,
            app: r.try_get("app")?,
            device: r.try_get("device")?,
            rollout: r.try_get("rollout")?,
            subject: r.try_get("subject")?,
            detail: r.try_get("detail")?,
            opened_ms,
            opened_at: rfc3339(opened_ms),
            resolved_ms,
            resolved_at: resolved_ms.map(rfc3339),
        },
        id,
    })
}

/// Most notifications one instance claims per round.
const BATCH: i64 = 32;

/// Claims the due notifications (a lease of a minute), delivers them concurrently and records
/// each outcome. Returns how many were attempted.
pub async fn deliver_due(db: &Db, n: &Notifier, now: i64) -> sqlx::Result<usize> {
    let claim = new_id();
    let lease = now.saturating_add(60_000);
    let claimed = sqlx::query(
        "UPDATE alert_deliveries SET claim = $1, claimed_until = $2 WHERE id IN \
         (SELECT id FROM alert_deliveries WHERE status = 'pending' AND next_ms <= $3 \
          AND claimed_until < $3 ORDER BY next_ms LIMIT $4) \
         AND status = 'pending' AND claimed_until < $3",
    )
    .bind(&claim)
    .bind(lease)
    .bind(now)
    .bind(BATCH)
    .execute(db.pool())
    .await?
    .rows_affected();
    if claimed == 0 {
        return Ok(0);
    }
    let rows = sqlx::query(
        "SELECT d.id, d.alert, d.event, d.kind, d.attempts, d.created_ms, \
         t.target AS dest_target, t.secret, a.kind AS alert_kind, a.alert_key, a.app, a.device, \
         a.rollout, a.subject, a.detail, a.opened_ms, a.resolved_ms \
         FROM alert_deliveries d JOIN alerts a ON a.id = d.alert \
         LEFT JOIN alert_destinations t ON t.id = d.destination \
         WHERE d.claim = $1 AND d.status = 'pending'",
    )
    .bind(&claim)
    .fetch_all(db.pool())
    .await?;
    let jobs: Vec<Claimed> = rows.iter().map(claimed_from).collect::<sqlx::Result<_>>()?;
    let outcomes = join_all(jobs.iter().map(|j| async move {
        let r = match (&j.target, j.kind.as_str()) {
            (None, _) => Err("destination removed".to_string()),
            (Some(url), "webhook") => {
                n.webhook(url, j.secret.as_deref().unwrap_or(""), &j.event)
                    .await
            }
            (Some(to), "email") => n.email(to, &j.event).await,
            (Some(_), other) => Err(format!("unknown destination kind {other}")),
        };
        (j, r)
    }))
    .await;
    let done_at = now_ms();
    for (j, r) in outcomes {
        let attempts = j.attempts.saturating_add(1);
        match r {
            Ok(()) => {
                sqlx::query(
                    "UPDATE alert_deliveries SET status = 'done', attempts = $1, done_ms = $2, \
                     last_error = NULL, claimed_until = 0 WHERE id = $3 AND claim = $4",
                )
                .bind(i64::from(attempts))
                .bind(done_at)
                .bind(&j.id)
                .bind(&claim)
                .execute(db.pool())
                .await?;
            }
            Err(e) => {
                let permanent = j.target.is_none();
                let failed = permanent || give_up(attempts, j.created_ms, done_at, &n.opts);
                let wait = backoff(attempts, n.opts.retry_base, n.opts.retry_cap);
                let next =
                    done_at.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2));
                tracing::warn!(
                    "alert notification {} ({} {}) attempt {attempts} failed: {e}",
                    j.id,
                    j.kind,
                    j.event.key
                );
                sqlx::query(
                    "UPDATE alert_deliveries SET status = $1, attempts = $2, next_ms = $3, \
                     done_ms = $4, last_error = $5, claimed_until = 0 \
                     WHERE id = $6 AND claim = $7",
                )
                .bind(if failed { "failed" } else { "pending" })
                .bind(i64::from(attempts))
                .bind(next)
                .bind(failed.then_some(done_at))
                .bind(cut(&e, 1024))
                .bind(&j.id)
                .bind(&claim)
                .execute(db.pool())
                .await?;
            }
        }
    }
    Ok(jobs.len())
}

/// Starts the alert engine's background tasks: the silent-device sweep and the retention of
/// resolved alerts (every poll interval, at most every 30 s) and the outbox delivery (every
/// `tick`). Every instance runs both;
/// the database keeps them from doing anything twice.
pub fn spawn(db: Db, o: AlertOptions, default_poll_secs: u64) -> Result<(), AlertError> {
    let notifier = Notifier::new(o.delivery.clone())?;
    let db2 = db.clone();
    let silent_after = o.silent_after;
    let retain_ms = i64::try_from(o.retain.as_millis()).unwrap_or(i64::MAX);
    tokio::spawn(async move {
        let every = Duration::from_secs(default_poll_secs.clamp(1, 30));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = now_ms();
            if let Err(e) = sweep_silent(&db2, silent_after, default_poll_secs, now).await {
                tracing::warn!("silent-device sweep: {e}");
            }
            if let Err(e) = super::store::prune(&db2, now.saturating_sub(retain_ms)).await {
                tracing::warn!("alert retention: {e}");
            }
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(o.tick.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = deliver_due(&db, &notifier, now_ms()).await {
                tracing::warn!("alert delivery: {e}");
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (base, cap) = (Duration::from_secs(30), Duration::from_secs(3600));
        let got: Vec<u64> = (1..=9).map(|a| backoff(a, base, cap).as_secs()).collect();
        assert_eq!(got, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff(u32::MAX, base, cap), cap);
    }

    #[test]
    fn gives_up_after_attempts_or_age() {
        let o = DeliveryOptions::default();
        let day = 24 * 3600 * 1000;
        for (attempts, age, want) in [
            (1, 0, false),
            (9, day - 1, false),
            (10, 0, true),
            (3, day, true),
        ] {
            assert_eq!(
                give_up(attempts, 1_000, 1_000 + age, &o),
                want,
                "{attempts} {age}"
            );
        }
    }

    #[test]
    fn signature_is_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn smtp_settings_are_checked() {
        let o = |url: &str, from: &str| DeliveryOptions {
            smtp: Some(SmtpConfig {
                url: url.into(),
                from: from.into(),
                password: None,
                ca_pem: None,
            }),
            ..DeliveryOptions::default()
        };
        assert!(Notifier::new(o("smtp://127.0.0.1:2525", "patchkit@example.com")).is_ok());
        assert!(Notifier::new(o("smtp://mail.example.com:587?tls=required", "a@b.c")).is_ok());
        assert!(Notifier::new(o("smtps://mail.example.com", "a@b.c")).is_ok());
        assert!(matches!(
            Notifier::new(o("smtp://127.0.0.1:2525", "not an address")),
            Err(AlertError::SmtpFrom { .. })
        ));
        assert!(matches!(
            Notifier::new(o("ftp://x", "a@b.c")),
            Err(AlertError::SmtpUrl { .. })
        ));
        let with_ca = |url: &str, pem: &[u8]| {
            let mut opts = o(url, "a@b.c");
            if let Some(c) = opts.smtp.as_mut() {
                c.ca_pem = Some(pem.to_vec());
            }
            Notifier::new(opts)
        };
        // A CA for a plain URL would be silently unused: refused.
        let err = with_ca("smtp://127.0.0.1:2525", b"x")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not a PEM") || err.contains("needs a TLS URL"),
            "{err}"
        );
        let err = with_ca("smtps://mail.example.com", b"not a certificate")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--smtp-ca-cert holds no PEM"), "{err}");
        // Debug output never shows a password.
        let mut opts = o("smtp://ops:hunter2@127.0.0.1:2525", "a@b.c");
        if let Some(c) = opts.smtp.as_mut() {
            c.password = Some("s3cret".into());
        }
        let shown = format!("{opts:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
    }
}
