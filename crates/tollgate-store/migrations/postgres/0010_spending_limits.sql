-- tollgate schema for PostgreSQL, version 10: an account's spending limits, each with the state
-- of its current period (what was spent and is held, the notices sent), kept as JSON with the
-- account and written with it, under its row lock (see `rows::LimitCols`). Empty for an
-- account without limits.
ALTER TABLE accounts ADD COLUMN limits TEXT NOT NULL DEFAULT '';
