-- tollgate schema for PostgreSQL, version 12 (SQLite's version 16): whether the platform was
-- told that a lot's credits expire soon (`credits.expiring`, once per lot, seven days ahead).
-- The sweep finds the lots still to notice through the partial index.
ALTER TABLE purchases ADD COLUMN expiry_noticed BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX purchases_expiry_notices ON purchases (expires_at)
    WHERE remaining_nanos > 0 AND expires_at IS NOT NULL AND NOT expiry_noticed;
