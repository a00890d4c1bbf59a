-- tollgate schema for SQLite: webhooks, a durable outbox and its deliveries.
--
-- A webhook is a subscription of the platform's: a URL, the event types it wants (`events`, a
-- JSON array of types or `["*"]`), and the secret its deliveries are signed with (kept as it
-- is: the server needs it to sign; the API shows it once). `webhook_event_types` lists each
-- live webhook's types (`*` for every type), so a batch fans its events out to the webhooks
-- that want them in SQL, in its own commit. A deleted webhook keeps its row (`deleted_at`)
-- and loses its types.
CREATE TABLE webhooks (
    webhook_id  TEXT    NOT NULL PRIMARY KEY,
    url         TEXT    NOT NULL,
    events      TEXT    NOT NULL,
    description TEXT,
    secret      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    deleted_at  INTEGER
);

CREATE TABLE webhook_event_types (
    event_type TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    PRIMARY KEY (event_type, webhook_id)
) WITHOUT ROWID;

-- The outbox: every event a batch recorded, written in the batch's commit. `seq` is the
-- event's number (`evt_<seq>`): the writer is the file's only one, so numbers increase in
-- commit order. `data` is the event as the core's `EventData` serializes it.
CREATE TABLE webhook_events (
    seq        INTEGER PRIMARY KEY,
    account    TEXT    NOT NULL,
    event_type TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    data       TEXT    NOT NULL
);

-- One event to one webhook. `status` is `pending`, `delivered` or `failed`; `attempts` counts
-- every attempt, `tries` those since the delivery was last queued (at the event, or by a
-- redelivery at `queued_at`), which the backoff and the retry window count from.
-- `lease_until` is set while a dispatcher sends it: no other claims it until then.
CREATE TABLE webhook_deliveries (
    webhook_id       TEXT    NOT NULL,
    event_seq        INTEGER NOT NULL,
    account          TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    attempts         INTEGER NOT NULL,
    tries            INTEGER NOT NULL,
    queued_at        INTEGER NOT NULL,
    next_attempt_at  INTEGER,
    lease_until      INTEGER,
    last_status_code INTEGER,
    last_error       TEXT,
    delivered_at     INTEGER,
    PRIMARY KEY (webhook_id, event_seq)
) WITHOUT ROWID;

-- What is due, in time order.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
-- Deliveries queued and not tried yet, per webhook and account: a later event of the account
-- waits for them (the order a healthy receiver sees).
CREATE INDEX webhook_deliveries_untried ON webhook_deliveries (webhook_id, account, event_seq)
    WHERE status = 'pending' AND tries = 0;

-- Every attempt: when, the receiver's status code or the error, and how long it took.
CREATE TABLE webhook_attempts (
    webhook_id  TEXT    NOT NULL,
    event_seq   INTEGER NOT NULL,
    n           INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    status_code INTEGER,
    error       TEXT,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (webhook_id, event_seq, n)
) WITHOUT ROWID;
