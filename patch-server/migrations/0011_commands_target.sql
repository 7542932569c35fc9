-- Group commands are found by their target at every check-in (`Db::device_by_token` asks
-- whether one may be waiting): an index instead of a scan of every command.
CREATE INDEX commands_target ON commands (target_kind, target, expires_ms);
