-- tollgate schema for PostgreSQL, version 15 (SQLite's version 19): runner event ids are kept
-- for a retention, not forever. See the SQLite file: the sweep deletes the ids received more
-- than `[serverless] event_retention_h` ago, a page per sweep batch, oldest first, by this
-- index.
CREATE INDEX runner_events_received ON runner_events (received_at);
