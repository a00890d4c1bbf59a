-- tollgate schema for PostgreSQL (SQLite's 0015): webhooks, a durable outbox and its
-- deliveries. See the SQLite file for what each table holds. Events are numbered from a
-- counter row that a batch with events advances in its db transaction (locked until it
-- commits, after the accounts and the invoice counters), so event numbers are unique and
-- increase in commit order across servers.
CREATE TABLE webhooks (
    webhook_id  TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    url         TEXT    NOT NULL,
    events      TEXT    NOT NULL,
    description TEXT,
    secret      TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    deleted_at  BIGINT
);

CREATE TABLE webhook_event_types (
    event_type TEXT COLLATE "C" NOT NULL,
    webhook_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (event_type, webhook_id)
);

CREATE TABLE webhook_event_counter (
    one      BOOLEAN NOT NULL PRIMARY KEY CHECK (one),
    last_seq BIGINT  NOT NULL
);
INSERT INTO webhook_event_counter (one, last_seq) VALUES (true, 0);

CREATE TABLE webhook_events (
    seq        BIGINT  NOT NULL PRIMARY KEY,
    account    TEXT COLLATE "C" NOT NULL,
    event_type TEXT COLLATE "C" NOT NULL,
    created_at BIGINT  NOT NULL,
    data       TEXT    NOT NULL
);

CREATE TABLE webhook_deliveries (
    webhook_id       TEXT COLLATE "C" NOT NULL,
    event_seq        BIGINT  NOT NULL,
    account          TEXT COLLATE "C" NOT NULL,
    status           TEXT    NOT NULL,
    attempts         BIGINT  NOT NULL,
    tries            BIGINT  NOT NULL,
    queued_at        BIGINT  NOT NULL,
    next_attempt_at  BIGINT,
    lease_until      BIGINT,
    last_status_code BIGINT,
    last_error       TEXT,
    delivered_at     BIGINT,
    PRIMARY KEY (webhook_id, event_seq)
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_untried ON webhook_deliveries (webhook_id, account, event_seq)
    WHERE status = 'pending' AND tries = 0;

CREATE TABLE webhook_attempts (
    webhook_id  TEXT COLLATE "C" NOT NULL,
    event_seq   BIGINT  NOT NULL,
    n           BIGINT  NOT NULL,
    at          BIGINT  NOT NULL,
    status_code BIGINT,
    error       TEXT,
    duration_ms BIGINT  NOT NULL,
    PRIMARY KEY (webhook_id, event_seq, n)
);
