-- tollgate schema for SQLite, version 19: runner event ids are kept for a retention, not
-- forever (docs/serverless.md, "Repeats and the retention").
--
-- An applied event id only answers a repeat of it as a duplicate (or refuses it when it says
-- something else); billing never depends on it (each runner's cursor only moves forward). At
-- 10,000 runners reporting every minute that is 14 million ids a day, so the sweep deletes the
-- ids received more than `[serverless] event_retention_h` ago (a week by default), a page per
-- sweep batch, oldest first: this index is that range. (The table is WITHOUT ROWID: the index
-- holds each row's event id, so a page is read from it alone.)
CREATE INDEX runner_events_received ON runner_events (received_at);
