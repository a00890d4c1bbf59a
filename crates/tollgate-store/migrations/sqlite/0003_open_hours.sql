-- tollgate schema, version 3: the hour rollup rows of the current hour are written once, when
-- it ends, from its minute rows (until then readers sum its minutes). Every hour before
-- `rollup_hours_open_from` has its hour rows; earlier versions wrote them with each batch, so
-- every hour that has any is closed, and the hours after the last of them are open (all of
-- them on a new database).
INSERT INTO settings (key, value)
SELECT 'rollup_hours_open_from',
       CAST(COALESCE(MAX(slot) + 3600000, -9223372036854775808) AS TEXT)
FROM (SELECT MAX(slot) AS slot FROM usage_hours UNION ALL SELECT MAX(slot) FROM activity_hours);
