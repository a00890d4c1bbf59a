-- tollgate schema, version 16: whether the platform was told that a lot's credits expire soon
-- (`credits.expiring`, once per lot, seven days ahead). The sweep finds the lots still to
-- notice through the partial index.
ALTER TABLE purchases ADD COLUMN expiry_noticed INTEGER NOT NULL DEFAULT 0;
CREATE INDEX purchases_expiry_notices ON purchases (expires_at)
    WHERE remaining_nanos > 0 AND expires_at IS NOT NULL AND expiry_noticed = 0;
