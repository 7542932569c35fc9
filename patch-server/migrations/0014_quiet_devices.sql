-- What lets the token's read of a check-in skip the device's open alerts and waiting commands
-- when it has none (db.rs, `Db::device_by_token`).
--
-- Two counters are raised in the same transaction as every change that can give a device an
-- open alert or a waiting command: the device's own `devices.extras_gen` (an alert opened for
-- it, a command queued for it, a tag added to it) and its app's `apps.extras_gen` (a command
-- queued for the whole app or for a tag some of its devices have). `devices.quiet_gen` is the sum of the
-- two at which a check-in of the device read that it had neither (NULL: not known to be quiet).
-- While it equals the sum, nothing can have given it one since, and its check-ins read neither
-- table. Per device, so that the alerts of other devices do not make every device read again.
ALTER TABLE apps ADD COLUMN extras_gen BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN extras_gen BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN quiet_gen BIGINT;
