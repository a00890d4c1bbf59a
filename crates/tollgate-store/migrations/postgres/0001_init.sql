-- tollgate schema for PostgreSQL, version 1: the same tables as the SQLite schema at its
-- version 2. Amounts are BIGINT nano-USD; times are BIGINT ms since epoch (UTC); exact decimals
-- are TEXT where they are only stored and NUMERIC where rollups add them. Identifiers compare
-- bytewise (COLLATE "C"), as in SQLite, so keyset pages and orderings are the same on both.

CREATE TABLE accounts (
    username              TEXT COLLATE "C" PRIMARY KEY,
    created_at            BIGINT  NOT NULL,
    billing               TEXT    NOT NULL CHECK (billing IN ('prepaid', 'invoice')),
    balance_nanos         BIGINT  NOT NULL DEFAULT 0,
    held_nanos            BIGINT  NOT NULL DEFAULT 0 CHECK (held_nanos >= 0),
    in_progress           BIGINT  NOT NULL DEFAULT 0 CHECK (in_progress >= 0),
    lock_threshold_nanos  BIGINT  NOT NULL DEFAULT 0,
    concurrency_override  BIGINT,
    discounts             TEXT    NOT NULL DEFAULT '{}',
    paid_lifetime_nanos   BIGINT  NOT NULL DEFAULT 0,
    month                 INTEGER NOT NULL DEFAULT 0,
    month_subtotal_nanos  BIGINT  NOT NULL DEFAULT 0
);

CREATE TABLE api_keys (
    key_id         TEXT COLLATE "C" PRIMARY KEY,
    account        TEXT COLLATE "C" REFERENCES accounts (username),
    scope          TEXT    NOT NULL CHECK (scope IN ('API', 'ADMIN', 'OPERATOR')),
    alias          TEXT    NOT NULL DEFAULT '',
    secret_sha256  TEXT    NOT NULL,
    created_at     BIGINT  NOT NULL,
    revoked_at     BIGINT
);
CREATE INDEX api_keys_by_account ON api_keys (account, created_at, key_id);

CREATE TABLE endpoints (
    endpoint_id  TEXT COLLATE "C" PRIMARY KEY,
    def          TEXT    NOT NULL,
    updated_at   BIGINT  NOT NULL
);

-- Never updated: a price change is a new row.
CREATE TABLE price_versions (
    id              BIGSERIAL PRIMARY KEY,
    endpoint_id     TEXT COLLATE "C" NOT NULL,
    account         TEXT COLLATE "C",
    effective_from  BIGINT  NOT NULL,
    rule            TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL
);

CREATE TABLE settings (
    key    TEXT COLLATE "C" PRIMARY KEY,
    value  TEXT NOT NULL
);

-- The request id is the idempotency key of the request lifecycle and of usage events.
CREATE TABLE requests (
    request_id       TEXT COLLATE "C" PRIMARY KEY,
    source           TEXT    NOT NULL,
    account          TEXT COLLATE "C" NOT NULL,
    endpoint_id      TEXT COLLATE "C" NOT NULL,
    api_key          TEXT COLLATE "C",
    price_version    BIGINT  NOT NULL,
    status           TEXT    NOT NULL,
    submitted_at     BIGINT  NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    hold_nanos       BIGINT  NOT NULL,
    hold_expires_at  BIGINT,
    machine_type     TEXT,
    num_gpus         BIGINT  NOT NULL,
    queue_ms         BIGINT,
    inference_ms     BIGINT,
    completion       TEXT
);
CREATE INDEX requests_hold_expiry ON requests (hold_expires_at) WHERE hold_expires_at IS NOT NULL;
CREATE INDEX requests_in_progress ON requests (account) WHERE status = 'IN_PROGRESS';

-- A purchase is also a credit lot: `remaining_nanos` is what is left of it.
CREATE TABLE purchases (
    account          TEXT COLLATE "C" NOT NULL,
    purchase_id      TEXT COLLATE "C" NOT NULL,
    amount_nanos     BIGINT  NOT NULL CHECK (amount_nanos > 0),
    paid             BOOLEAN NOT NULL,
    created_at       BIGINT  NOT NULL,
    expires_at       BIGINT,
    remaining_nanos  BIGINT  NOT NULL CHECK (remaining_nanos >= 0),
    balance_after    BIGINT  NOT NULL,
    limit_after      BIGINT  NOT NULL,
    locked_after     BOOLEAN NOT NULL,
    PRIMARY KEY (account, purchase_id)
);
CREATE INDEX purchases_by_time ON purchases (account, created_at);
CREATE INDEX purchases_open_lots ON purchases (account) WHERE remaining_nanos > 0;
CREATE INDEX purchases_expiring ON purchases (expires_at)
    WHERE remaining_nanos > 0 AND expires_at IS NOT NULL;

-- Append-only.
CREATE TABLE transfers (
    id            BIGSERIAL PRIMARY KEY,
    kind          TEXT    NOT NULL,
    debit         TEXT COLLATE "C" NOT NULL,
    credit        TEXT COLLATE "C" NOT NULL,
    amount_nanos  BIGINT  NOT NULL CHECK (amount_nanos >= 0),
    request_id    TEXT COLLATE "C",
    purchase_id   TEXT COLLATE "C",
    at            BIGINT  NOT NULL
);

-- One row per billed request, keyed as billing events page through them.
CREATE TABLE line_items (
    account           TEXT COLLATE "C" NOT NULL,
    billed_at         BIGINT  NOT NULL,
    request_id        TEXT COLLATE "C" NOT NULL,
    endpoint_id       TEXT COLLATE "C" NOT NULL,
    api_key           TEXT COLLATE "C",
    price_version     BIGINT  NOT NULL,
    unit              TEXT    NOT NULL,
    quantity          TEXT    NOT NULL,
    unit_price        TEXT    NOT NULL,
    percent_discount  TEXT,
    subtotal_nanos    BIGINT  NOT NULL,
    discount_nanos    BIGINT  NOT NULL,
    total_nanos       BIGINT  NOT NULL,
    status_code       INTEGER NOT NULL,
    queue_ms          BIGINT,
    inference_ms      BIGINT,
    PRIMARY KEY (account, billed_at, request_id)
);

-- The rollups, as in SQLite (see its 0002_rollups.sql), keyed by account first: several
-- processes write them, each under its accounts' row locks, and a read is one range scan.
CREATE TABLE usage_minutes (
    account           TEXT COLLATE "C" NOT NULL,
    slot              BIGINT  NOT NULL,
    endpoint_id       TEXT COLLATE "C" NOT NULL,
    api_key           TEXT COLLATE "C" NOT NULL,
    unit              TEXT COLLATE "C" NOT NULL,
    unit_price        TEXT COLLATE "C" NOT NULL,
    blend_version     BIGINT  NOT NULL,
    percent_discount  TEXT COLLATE "C" NOT NULL,
    quantity          NUMERIC NOT NULL,
    requests          BIGINT  NOT NULL,
    subtotal_nanos    BIGINT  NOT NULL,
    discount_nanos    BIGINT  NOT NULL,
    total_nanos       BIGINT  NOT NULL,
    PRIMARY KEY (account, slot, endpoint_id, api_key, unit, unit_price, blend_version,
                 percent_discount)
);
CREATE TABLE usage_hours (LIKE usage_minutes INCLUDING ALL);

CREATE TABLE activity_minutes (
    account      TEXT COLLATE "C" NOT NULL,
    slot         BIGINT  NOT NULL,
    endpoint_id  TEXT COLLATE "C" NOT NULL,
    requests     BIGINT  NOT NULL,
    successes    BIGINT  NOT NULL,
    user_errors  BIGINT  NOT NULL,
    errors       BIGINT  NOT NULL,
    billable_ms  BIGINT  NOT NULL,
    prepare_ms   BYTEA   NOT NULL,
    duration_ms  BYTEA   NOT NULL,
    PRIMARY KEY (account, slot, endpoint_id)
);
CREATE TABLE activity_hours (LIKE activity_minutes INCLUDING ALL);
