-- tollgate schema, version 1. Amounts are INTEGER nano-USD; times are INTEGER ms since epoch
-- (UTC); exact decimals (quantities, unit prices, percents) are TEXT.

CREATE TABLE accounts (
    username              TEXT PRIMARY KEY,
    created_at            INTEGER NOT NULL,
    billing               TEXT    NOT NULL CHECK (billing IN ('prepaid', 'invoice')),
    balance_nanos         INTEGER NOT NULL DEFAULT 0,
    held_nanos            INTEGER NOT NULL DEFAULT 0 CHECK (held_nanos >= 0),
    in_progress           INTEGER NOT NULL DEFAULT 0 CHECK (in_progress >= 0),
    lock_threshold_nanos  INTEGER NOT NULL DEFAULT 0,
    concurrency_override  INTEGER,
    discounts             TEXT    NOT NULL DEFAULT '{}',
    paid_lifetime_nanos   INTEGER NOT NULL DEFAULT 0,
    month                 INTEGER NOT NULL DEFAULT 0,
    month_subtotal_nanos  INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE api_keys (
    key_id         TEXT PRIMARY KEY,
    account        TEXT REFERENCES accounts (username),
    scope          TEXT    NOT NULL CHECK (scope IN ('API', 'ADMIN', 'OPERATOR')),
    alias          TEXT    NOT NULL DEFAULT '',
    secret_sha256  TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    revoked_at     INTEGER
) WITHOUT ROWID;

CREATE TABLE endpoints (
    endpoint_id  TEXT PRIMARY KEY,
    def          TEXT    NOT NULL,
    updated_at   INTEGER NOT NULL
) WITHOUT ROWID;

-- Never updated: a price change is a new row.
CREATE TABLE price_versions (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id     TEXT    NOT NULL,
    account         TEXT,
    effective_from  INTEGER NOT NULL,
    rule            TEXT    NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX price_versions_scope ON price_versions (endpoint_id, account, effective_from);

CREATE TABLE settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
) WITHOUT ROWID;

-- Rows are kept in arrival order (rowid), so the requests in flight, which start and complete
-- update, sit together in the last pages; only the narrow unique index on request_id (the
-- idempotency key) takes an insert at a random position.
CREATE TABLE requests (
    id               INTEGER PRIMARY KEY,
    request_id       TEXT    NOT NULL UNIQUE,
    source           TEXT    NOT NULL,
    account          TEXT    NOT NULL,
    endpoint_id      TEXT    NOT NULL,
    api_key          TEXT,
    price_version    INTEGER NOT NULL,
    status           TEXT    NOT NULL,
    submitted_at     INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    hold_nanos       INTEGER NOT NULL,
    hold_expires_at  INTEGER,
    machine_type     TEXT,
    num_gpus         INTEGER NOT NULL,
    queue_ms         INTEGER,
    inference_ms     INTEGER,
    completion       TEXT
);
CREATE INDEX requests_hold_expiry ON requests (hold_expires_at) WHERE hold_expires_at IS NOT NULL;

-- A purchase is also a credit lot: `remaining_nanos` is what is left of it, spent earliest
-- expiry first, and expired by the sweeper after `expires_at`.
CREATE TABLE purchases (
    account          TEXT    NOT NULL,
    purchase_id      TEXT    NOT NULL,
    amount_nanos     INTEGER NOT NULL CHECK (amount_nanos > 0),
    paid             INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER,
    remaining_nanos  INTEGER NOT NULL CHECK (remaining_nanos >= 0),
    balance_after    INTEGER NOT NULL,
    limit_after      INTEGER NOT NULL,
    locked_after     INTEGER NOT NULL,
    PRIMARY KEY (account, purchase_id)
) WITHOUT ROWID;
CREATE INDEX purchases_by_time ON purchases (account, created_at);
CREATE INDEX purchases_open_lots ON purchases (account) WHERE remaining_nanos > 0;
CREATE INDEX purchases_expiring ON purchases (expires_at)
    WHERE remaining_nanos > 0 AND expires_at IS NOT NULL;

-- Append-only.
CREATE TABLE transfers (
    id            INTEGER PRIMARY KEY,
    kind          TEXT    NOT NULL,
    debit         TEXT    NOT NULL,
    credit        TEXT    NOT NULL,
    amount_nanos  INTEGER NOT NULL CHECK (amount_nanos >= 0),
    request_id    TEXT,
    purchase_id   TEXT,
    at            INTEGER NOT NULL
);

-- One row per billed request. Append-only, in billing order: the request id is unique by
-- construction (the requests table is the idempotency key), so no second index on it is
-- kept here; an index written at random positions per insert is what a commit pays for most.
CREATE TABLE line_items (
    id                INTEGER PRIMARY KEY,
    request_id        TEXT    NOT NULL,
    account           TEXT    NOT NULL,
    endpoint_id       TEXT    NOT NULL,
    api_key           TEXT,
    price_version     INTEGER NOT NULL,
    unit              TEXT    NOT NULL,
    quantity          TEXT    NOT NULL,
    unit_price        TEXT    NOT NULL,
    percent_discount  TEXT,
    subtotal_nanos    INTEGER NOT NULL,
    discount_nanos    INTEGER NOT NULL,
    total_nanos       INTEGER NOT NULL,
    status_code       INTEGER NOT NULL,
    billed_at         INTEGER NOT NULL,
    queue_ms          INTEGER,
    inference_ms      INTEGER
);
