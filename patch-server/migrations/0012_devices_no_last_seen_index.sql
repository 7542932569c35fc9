-- Every check-in writes `last_seen_ms`. With an index on it, each of those writes also
-- changed that index, and on PostgreSQL no check-in could be a HOT update (an update that
-- changes no indexed column stays in the row's page and touches no index): every check-in
-- then inserted into all four indexes of `devices`. The readers of `last_seen_ms` (the
-- silent-device sweep, `devices --silent-for`, the dashboard's sort) compare it with each
-- device's own poll interval or sort by it, and scan the table anyway or read it once a
-- minute; they do without the index.
DROP INDEX devices_last_seen;
