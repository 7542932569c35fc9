-- A counter per app, raised in the same transaction as every change to what decides a
-- device's release (releases, unfinished rollouts' state, percentage and schedule, pins,
-- pushes). Each instance caches those rules per app and reloads them when a check-in's device
-- row shows a newer counter: a check-in then reads no rules table, and a change made through
-- any instance is seen by every instance at its next check-in.
ALTER TABLE apps ADD COLUMN rules_gen BIGINT NOT NULL DEFAULT 0;
