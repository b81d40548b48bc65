-- Credentials follow their maker's rights (issue 15, point 2): remember the last identity seen
-- of each person (roles, groups, e-mail), and let an admin disable a person in authsvc.
ALTER TABLE known_user ADD COLUMN identity JSONB;
ALTER TABLE known_user ADD COLUMN disabled_at TIMESTAMPTZ;
ALTER TABLE known_user ADD COLUMN disabled_by TEXT;
