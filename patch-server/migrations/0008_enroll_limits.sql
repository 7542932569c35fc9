-- Enrollment attempts per app and source address, for the enrollment rate limit (rows older
-- than the limit's window are pruned as new ones arrive).
CREATE TABLE enroll_attempts (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    ip TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX enroll_attempts_key ON enroll_attempts (app, ip, at_ms);
CREATE INDEX enroll_attempts_at ON enroll_attempts (at_ms);
-- Counting pending devices of an app (approval mode's cap).
CREATE INDEX devices_app_status ON devices (app, status);
-- Group commands (app or tag) still open, looked up at each check-in so that devices joining
-- the group later receive them too.
CREATE INDEX commands_group ON commands (target_kind, target, expires_ms);
