-- The web dashboard (issue 19): accounts, sessions, login throttling, and the indexes the
-- devices table needs to filter, sort and page 100,000 rows. Portable SQL as in 0001.

-- People who log in to the dashboard. role is admin (acts) or viewer (reads only).
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    -- argon2id PHC string (salt and parameters inside).
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);

-- Logged-in browsers. Only the SHA-256 of the cookie's 256-bit id is stored, so reading the
-- database does not let anyone take over a session. csrf is the per-session form token.
CREATE TABLE sessions (
    id_sha256 TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_name);
CREATE INDEX sessions_expires ON sessions (expires_ms);

-- Failed logins, counted per user name and client address over a window (rate limiting
-- that holds across instances). Old rows are pruned.
CREATE TABLE login_failures (
    id TEXT PRIMARY KEY,
    user_name TEXT NOT NULL,
    ip TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX login_failures_key ON login_failures (user_name, ip, at_ms);

-- The release the server last directed a device to (NULL: none): "updating" on the
-- dashboard is a device directed to a version it has not reached.
ALTER TABLE devices ADD COLUMN directed_version TEXT;

-- Filters and sorts of the devices table.
CREATE INDEX devices_app_version ON devices (app, version, id);
CREATE INDEX devices_version ON devices (version, id);
CREATE INDEX devices_result_ok ON devices (last_result_ok, id);
CREATE INDEX devices_status ON devices (status, id);
CREATE INDEX devices_hostname ON devices (hostname, id);
CREATE INDEX devices_last_seen_id ON devices (last_seen_ms, id);
CREATE INDEX audit_log_actor ON audit_log (actor, at_ms);
