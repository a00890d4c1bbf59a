-- tollgate schema, version 3: a batch writes its rollup deltas to minute rows only, and the
-- first batch of the next minute folds them into their hour rows (readers add the minutes not
-- folded yet). `rollup_minutes_folded_before` is the first minute not folded. Earlier versions
-- wrote both grains in every batch, so every minute there is already in its hour row (none on
-- a new database).
INSERT INTO settings (key, value)
SELECT 'rollup_minutes_folded_before',
       CAST(COALESCE(MAX(slot) + 60000, -9223372036854775808) AS TEXT)
FROM (SELECT MAX(slot) AS slot FROM usage_minutes
      UNION ALL SELECT MAX(slot) FROM activity_minutes);
