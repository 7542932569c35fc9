
-- PostgreSQL only. The second index on `last_seen_ms` (`devices_last_seen_id`, for the
-- dashboard's sort by last seen) had the cost of the one 0012 dropped: every check-in changed
-- it, so no check-in could be a HOT update (one that changes no indexed column and fits in the
-- row's own page, touching no index), and each one inserted into all nine indexes of
-- `devices`. The dashboard sorts a scan of the devices instead.
DROP INDEX devices_last_seen_id;
-- Leave a quarter of each page of `devices` free, so that the new version of a row written by
-- a check-in fits in the row's own page. Rows written before this keep their pages until they
-- move.
ALTER TABLE devices SET (fillfactor = 75);
