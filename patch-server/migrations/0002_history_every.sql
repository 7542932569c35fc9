-- When the device's last check-in history row was written: idle check-ins add a history row
-- at most every --history-every (a change of version or channel always adds one).
ALTER TABLE devices ADD COLUMN last_history_ms BIGINT;
