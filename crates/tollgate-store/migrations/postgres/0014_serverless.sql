-- tollgate schema for PostgreSQL, version 14 (SQLite's version 18): serverless runners. See
-- the SQLite file for what each table and column holds. A runner's billed time is recorded as
-- line items of its line's key, like any other usage; every row here belongs to an account and
-- is written under its row lock.
CREATE TABLE runners (
    runner_id             TEXT COLLATE "C" PRIMARY KEY,
    account               TEXT COLLATE "C" NOT NULL,
    app                   TEXT COLLATE "C" NOT NULL,
    environment           TEXT COLLATE "C",
    machine_type          TEXT COLLATE "C" NOT NULL,
    num_gpus              BIGINT  NOT NULL CHECK (num_gpus > 0),
    is_surge              BOOLEAN NOT NULL,
    state                 TEXT    NOT NULL,
    state_at              BIGINT  NOT NULL,
    last_at               BIGINT  NOT NULL,
    settled_until         BIGINT  NOT NULL,
    cap_at                BIGINT  NOT NULL,
    first_at              BIGINT  NOT NULL,
    seg_unit_price        TEXT,
    seg_percent_discount  TEXT,
    seg_quantity          TEXT,
    seg_subtotal_nanos    BIGINT,
    seg_total_nanos       BIGINT,
    billed_nanos          BIGINT  NOT NULL
);
CREATE INDEX runners_due ON runners (settled_until, runner_id) WHERE settled_until < cap_at;
CREATE INDEX runners_by_account ON runners (account, last_at);

CREATE TABLE runner_events (
    event_id     TEXT COLLATE "C" PRIMARY KEY,
    runner_id    TEXT COLLATE "C" NOT NULL,
    account      TEXT COLLATE "C" NOT NULL,
    state        TEXT    NOT NULL,
    at           BIGINT  NOT NULL,
    received_at  BIGINT  NOT NULL
);

CREATE TABLE runner_minutes (
    account      TEXT COLLATE "C" NOT NULL,
    app          TEXT COLLATE "C" NOT NULL,
    slot         BIGINT  NOT NULL,
    running_ms   BIGINT  NOT NULL,
    idle_ms      BIGINT  NOT NULL,
    pending_ms   BIGINT  NOT NULL,
    draining_ms  BIGINT  NOT NULL,
    PRIMARY KEY (account, app, slot)
);
