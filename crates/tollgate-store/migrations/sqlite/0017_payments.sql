-- tollgate schema for SQLite, version 17: payments through the payment provider (top-ups,
-- its events, refunds, disputes, auto top-up).
--
-- The provider tells states, not deltas (a charge's cumulative refunded amount, a dispute's
-- status), so what was applied is kept beside what it was applied to: a purchase's refunded
-- and disputed amounts (taken back from the balance), a top-up's status and the refunded
-- amount the provider last told, a dispute's status and what it takes now.

-- The account's side at the provider (its customer, saved payment method, auto top-up rule
-- and its state, the dispute locks), as JSON written with the account; empty for an account
-- that never paid through the provider, so such an account parses and writes nothing more.
ALTER TABLE accounts ADD COLUMN payment TEXT NOT NULL DEFAULT '';

-- What was taken back of a purchase: refunded (the provider's cumulative amount, or an
-- operator's refunds of a manual purchase) and disputed (open and lost disputes).
ALTER TABLE purchases ADD COLUMN refunded_nanos INTEGER NOT NULL DEFAULT 0
    CHECK (refunded_nanos >= 0);
ALTER TABLE purchases ADD COLUMN disputed_nanos INTEGER NOT NULL DEFAULT 0
    CHECK (disputed_nanos >= 0);

-- A top-up: a checkout the customer pays, or an auto top-up charged off-session. Its id is
-- also the id of the purchase its payment becomes. `status` is `awaiting_payment`,
-- `succeeded` or `failed`; `kind` `checkout` or `auto`.
CREATE TABLE top_ups (
    account                  TEXT    NOT NULL,
    top_up_id                TEXT    NOT NULL,
    kind                     TEXT    NOT NULL,
    amount_nanos             INTEGER NOT NULL,
    status                   TEXT    NOT NULL,
    created_at               INTEGER NOT NULL,
    updated_at               INTEGER NOT NULL,
    checkout_session         TEXT,
    checkout_url             TEXT,
    payment_intent           TEXT,
    provider_refunded_nanos  INTEGER NOT NULL DEFAULT 0,
    failure                  TEXT,
    PRIMARY KEY (account, top_up_id)
) WITHOUT ROWID;
-- The provider's refunds and disputes name the payment, not the top-up.
CREATE INDEX top_ups_by_payment_intent ON top_ups (payment_intent)
    WHERE payment_intent IS NOT NULL;

-- A dispute of a top-up's payment, as the provider last told it (`open`, `won`, `lost`),
-- with what it takes from the balance now and the dispute epoch in which it locked the
-- account (while it holds the lock).
CREATE TABLE disputes (
    account        TEXT    NOT NULL,
    dispute_id     TEXT    NOT NULL,
    top_up_id      TEXT    NOT NULL,
    amount_nanos   INTEGER NOT NULL,
    status         TEXT    NOT NULL,
    taken_nanos    INTEGER NOT NULL,
    locking_epoch  INTEGER,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (account, dispute_id)
) WITHOUT ROWID;
-- Every dispute of a top-up, loaded with it.
CREATE INDEX disputes_by_top_up ON disputes (account, top_up_id);

-- The provider's events applied, each once: written in the commit of its effect.
CREATE TABLE payment_events (
    event_id    TEXT    NOT NULL PRIMARY KEY,
    account     TEXT    NOT NULL,
    event_type  TEXT    NOT NULL,
    applied_at  INTEGER NOT NULL
) WITHOUT ROWID;

-- An operator's refund and its answer (the idempotency record): what was asked, what it took
-- from the balance, the provider's refund when the purchase was paid through it.
CREATE TABLE refunds (
    account             TEXT    NOT NULL,
    refund_id           TEXT    NOT NULL,
    purchase_id         TEXT    NOT NULL,
    amount_nanos        INTEGER NOT NULL,
    taken_nanos         INTEGER NOT NULL,
    provider_reference  TEXT,
    created_at          INTEGER NOT NULL,
    balance_after       INTEGER NOT NULL,
    PRIMARY KEY (account, refund_id)
) WITHOUT ROWID;

-- A credit note corrects the top-up invoice of the purchase it refunds: that invoice's number.
ALTER TABLE invoices ADD COLUMN corrects_year INTEGER;
ALTER TABLE invoices ADD COLUMN corrects_seq INTEGER;

-- The payment provider's own subscription (`provider`: its deliveries are charges made
-- through the provider's API, not POSTs to a URL) beside the operator's webhooks (`http`).
ALTER TABLE webhooks ADD COLUMN kind TEXT NOT NULL DEFAULT 'http';
