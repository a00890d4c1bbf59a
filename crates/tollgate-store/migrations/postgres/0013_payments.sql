-- tollgate schema for PostgreSQL, version 13 (SQLite's version 17): payments through the
-- payment provider (top-ups, its events, refunds, disputes, auto top-up). See the SQLite file
-- for what each table and column holds. Every row belongs to an account and is written under
-- its row lock.
ALTER TABLE accounts ADD COLUMN payment TEXT NOT NULL DEFAULT '';

ALTER TABLE purchases ADD COLUMN refunded_nanos BIGINT NOT NULL DEFAULT 0
    CHECK (refunded_nanos >= 0);
ALTER TABLE purchases ADD COLUMN disputed_nanos BIGINT NOT NULL DEFAULT 0
    CHECK (disputed_nanos >= 0);

CREATE TABLE top_ups (
    account                  TEXT COLLATE "C" NOT NULL,
    top_up_id                TEXT COLLATE "C" NOT NULL,
    kind                     TEXT    NOT NULL,
    amount_nanos             BIGINT  NOT NULL,
    status                   TEXT    NOT NULL,
    created_at               BIGINT  NOT NULL,
    updated_at               BIGINT  NOT NULL,
    checkout_session         TEXT,
    checkout_url             TEXT,
    payment_intent           TEXT COLLATE "C",
    provider_refunded_nanos  BIGINT  NOT NULL DEFAULT 0,
    failure                  TEXT,
    PRIMARY KEY (account, top_up_id)
);
CREATE INDEX top_ups_by_payment_intent ON top_ups (payment_intent)
    WHERE payment_intent IS NOT NULL;

CREATE TABLE disputes (
    account        TEXT COLLATE "C" NOT NULL,
    dispute_id     TEXT COLLATE "C" NOT NULL,
    top_up_id      TEXT COLLATE "C" NOT NULL,
    amount_nanos   BIGINT  NOT NULL,
    status         TEXT    NOT NULL,
    taken_nanos    BIGINT  NOT NULL,
    locking_epoch  BIGINT,
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL,
    PRIMARY KEY (account, dispute_id)
);
CREATE INDEX disputes_by_top_up ON disputes (account, top_up_id);

-- An event id inserted by two servers at once fails one of the inserts (a unique violation):
-- that batch is run again and finds the event applied.
CREATE TABLE payment_events (
    event_id    TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    account     TEXT COLLATE "C" NOT NULL,
    event_type  TEXT    NOT NULL,
    applied_at  BIGINT  NOT NULL
);

CREATE TABLE refunds (
    account             TEXT COLLATE "C" NOT NULL,
    refund_id           TEXT COLLATE "C" NOT NULL,
    purchase_id         TEXT COLLATE "C" NOT NULL,
    amount_nanos        BIGINT  NOT NULL,
    taken_nanos         BIGINT  NOT NULL,
    provider_reference  TEXT,
    created_at          BIGINT  NOT NULL,
    balance_after       BIGINT  NOT NULL,
    PRIMARY KEY (account, refund_id)
);

ALTER TABLE invoices ADD COLUMN corrects_year BIGINT;
ALTER TABLE invoices ADD COLUMN corrects_seq BIGINT;

ALTER TABLE webhooks ADD COLUMN kind TEXT NOT NULL DEFAULT 'http';
