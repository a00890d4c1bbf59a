-- tollgate schema for SQLite, version 14: an account's spending limits, each with the state of
-- its current period (what was spent and is held, the notices sent), kept as JSON with the
-- account and written with it (see `rows::LimitCols`). Empty for an account without limits,
-- so that nothing is parsed or written for it.
ALTER TABLE accounts ADD COLUMN limits TEXT NOT NULL DEFAULT '';
