-- A push may expire (NULL: it stays until removed). An expired push no longer applies at
-- check-in; it stays listed, with its expiry, until removed.
ALTER TABLE pushes ADD COLUMN expires_ms BIGINT;
