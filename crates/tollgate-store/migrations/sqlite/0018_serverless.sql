-- tollgate schema for SQLite, version 18: serverless runners (docs/serverless.md).
--
-- A runner's billed time is recorded as line items of its line's key (endpoint
-- `serverless/<app>/<environment>/<machine>/<standard|surge>`, request id `runner:<runner_id>`),
-- with their charge transfers, rollups, accruals and statement rows, like any other usage:
-- these tables keep only what runners have beside that.

-- A runner, fixed by its first report (account, app, environment, machine type, GPUs, surge),
-- and where its timeline stands: its state since `state_at`, its latest report's `last_at`,
-- the cursor `settled_until` up to which its time is accounted, and `cap_at`, how far it may
-- be accounted without another report (`last_at` + the grace, `last_at` once terminated).
-- `environment` is NULL for none. The current price segment (what it has been billed so far
-- under one unit price and percent discount, for exact cumulative rounding) is its `seg_*`
-- columns, all NULL before its first billed second; decimals are exact TEXT, the percent
-- NULL for none. `billed_nanos` is everything billed to it.
CREATE TABLE runners (
    runner_id             TEXT    PRIMARY KEY,
    account               TEXT    NOT NULL,
    app                   TEXT    NOT NULL,
    environment           TEXT,
    machine_type          TEXT    NOT NULL,
    num_gpus              INTEGER NOT NULL CHECK (num_gpus > 0),
    is_surge              INTEGER NOT NULL,
    state                 TEXT    NOT NULL,
    state_at              INTEGER NOT NULL,
    last_at               INTEGER NOT NULL,
    settled_until         INTEGER NOT NULL,
    cap_at                INTEGER NOT NULL,
    first_at              INTEGER NOT NULL,
    seg_unit_price        TEXT,
    seg_percent_discount  TEXT,
    seg_quantity          TEXT,
    seg_subtotal_nanos    INTEGER,
    seg_total_nanos       INTEGER,
    billed_nanos          INTEGER NOT NULL
) WITHOUT ROWID;
-- The runners due for settlement, oldest cursor first (then by runner id, which the index
-- holds as the table's key): only those whose time is not accounted up to their cap, so a
-- settled or silent runner leaves the index.
CREATE INDEX runners_due ON runners (settled_until) WHERE settled_until < cap_at;
-- An account's runners by their latest report: the live ones an `account.locked` event names
-- (reported within the longest grace), and the account's list, latest first.
CREATE INDEX runners_by_account ON runners (account, last_at);

-- Every runner event applied, kept forever: a repeat of its id is a duplicate (answered as
-- such when it says the same thing, refused otherwise). Written in the commit of its effect.
CREATE TABLE runner_events (
    event_id     TEXT    PRIMARY KEY,
    runner_id    TEXT    NOT NULL,
    account      TEXT    NOT NULL,
    state        TEXT    NOT NULL,
    at           INTEGER NOT NULL,
    received_at  INTEGER NOT NULL
) WITHOUT ROWID;

-- The runner-state history: runner-milliseconds (not × GPUs) per account, app and UTC minute
-- (`slot`, its start in ms) in each of fal's columns (RUNNING; IDLE; PENDING, DOCKER_PULL and
-- SETUP; DRAINING and TERMINATING), added to by the batch that accounts the time. Keyed as it
-- is read: one app's range of minutes.
CREATE TABLE runner_minutes (
    account      TEXT    NOT NULL,
    app          TEXT    NOT NULL,
    slot         INTEGER NOT NULL,
    running_ms   INTEGER NOT NULL,
    idle_ms      INTEGER NOT NULL,
    pending_ms   INTEGER NOT NULL,
    draining_ms  INTEGER NOT NULL,
    PRIMARY KEY (account, app, slot)
) WITHOUT ROWID;
