-- The signed yank of a release (its reason), as read from the app's repository.
ALTER TABLE releases ADD COLUMN yanked TEXT;
