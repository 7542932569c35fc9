-- Alerts (docs/fleet.md, "Alerts"). Portable SQL as in 0001: i64 unix ms, ids made by the
-- server, no AUTOINCREMENT/SERIAL.

-- One row per occurrence of a condition. `open_key` equals `alert_key` while the alert is open
-- and is NULL once it is resolved: the unique index lets at most one alert per condition be
-- open, whichever server instance raises it (several NULLs are allowed on both backends).
CREATE TABLE alerts (
    id TEXT PRIMARY KEY,
    alert_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    app TEXT,
    device TEXT,
    rollout TEXT,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL,
    opened_ms BIGINT NOT NULL,
    resolved_ms BIGINT,
    open_key TEXT
);
CREATE UNIQUE INDEX alerts_open_key ON alerts (open_key);
CREATE INDEX alerts_opened ON alerts (opened_ms);

-- Where notifications go: kind webhook (target = URL, secret = HMAC key) or email
-- (target = address). app NULL = alerts of every app.
CREATE TABLE alert_destinations (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    secret TEXT,
    app TEXT,
    created_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

-- The outbox: one row per (alert event, destination), written with the alert in the same
-- transaction; delivered by a background task of any instance that claims the row with a lease
-- (claim, claimed_until). status: pending, done or failed.
CREATE TABLE alert_deliveries (
    id TEXT PRIMARY KEY,
    alert TEXT NOT NULL REFERENCES alerts(id),
    event TEXT NOT NULL,
    destination TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_ms BIGINT NOT NULL,
    claim TEXT,
    claimed_until BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    done_ms BIGINT,
    last_error TEXT
);
CREATE INDEX alert_deliveries_due ON alert_deliveries (status, next_ms);
CREATE INDEX alert_deliveries_alert ON alert_deliveries (alert);
