-- Fleet 3: who gets which release. Portable SQL (see 0001): i64 unix ms, BIGINT 0/1 flags,
-- ids made by the server. Precedence at check-in: pin > push > rollout > channel default.

-- A device, or every device with a tag, held at a release of an app.
CREATE TABLE pins (
    app TEXT NOT NULL REFERENCES apps(name),
    -- device or tag
    target_kind TEXT NOT NULL,
    target TEXT NOT NULL,
    version TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (app, target_kind, target)
);

-- "Go to this release now" for a device, a tag or every device of an app; it applies to a
-- matching device while the device runs an older release (a one-off move, never a downgrade).
CREATE TABLE pushes (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL REFERENCES apps(name),
    -- device, tag or all (target is '' for all)
    target_kind TEXT NOT NULL,
    target TEXT NOT NULL,
    version TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE INDEX pushes_target ON pushes (app, target_kind, target);

-- A staged rollout of one release. state: running, halted or finished. The counters are kept
-- exactly, in the same transaction as each participant's change (see rollout_devices).
CREATE TABLE rollouts (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL REFERENCES apps(name),
    version TEXT NOT NULL,
    percent BIGINT NOT NULL,
    max_failure_rate DOUBLE PRECISION NOT NULL,
    min_devices BIGINT NOT NULL,
    timeout_ms BIGINT NOT NULL,
    -- Percentages to raise to, in order ("5,25,50,100"), one step every schedule_every_ms.
    schedule TEXT,
    schedule_every_ms BIGINT,
    schedule_next_ms BIGINT,
    -- Rate cap: at most max_per_period devices newly offered per period_ms.
    max_per_period BIGINT,
    period_ms BIGINT,
    state TEXT NOT NULL,
    halt_reason TEXT,
    offered BIGINT NOT NULL DEFAULT 0,
    succeeded BIGINT NOT NULL DEFAULT 0,
    failed BIGINT NOT NULL DEFAULT 0,
    timed_out BIGINT NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE INDEX rollouts_app ON rollouts (app, state);

-- One row per device offered a rollout's release. result: pending, ok, failed or timeout
-- (offered, but no success within the rollout's timeout; counted as failed).
CREATE TABLE rollout_devices (
    rollout TEXT NOT NULL REFERENCES rollouts(id),
    device TEXT NOT NULL REFERENCES devices(id),
    offered_ms BIGINT NOT NULL,
    result TEXT NOT NULL,
    result_ms BIGINT,
    PRIMARY KEY (rollout, device)
);
CREATE INDEX rollout_devices_device ON rollout_devices (device, result);
CREATE INDEX rollout_devices_pending ON rollout_devices (rollout, result, offered_ms);
CREATE INDEX rollout_devices_offered ON rollout_devices (rollout, offered_ms);
