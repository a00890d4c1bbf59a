-- tollgate schema, version 2: what the customer-facing reads are answered from.

-- Line items clustered by account and billing time: billing events page through one account's
-- range in (billed_at, request_id) order, and a batch appends at the end of each account's range
-- (one page per account touched, not one per line item).
CREATE TABLE line_items_by_account (
    account           TEXT    NOT NULL,
    billed_at         INTEGER NOT NULL,
    request_id        TEXT    NOT NULL,
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
    queue_ms          INTEGER,
    inference_ms      INTEGER,
    PRIMARY KEY (account, billed_at, request_id)
) WITHOUT ROWID;
INSERT INTO line_items_by_account
    SELECT account, billed_at, request_id, endpoint_id, api_key, price_version, unit, quantity,
           unit_price, percent_discount, subtotal_nanos, discount_nanos, total_nanos, status_code,
           queue_ms, inference_ms
    FROM line_items;
DROP TABLE line_items;
ALTER TABLE line_items_by_account RENAME TO line_items;

-- Usage per account, minute (UTC, ms) and fal's usage grouping. Written by the same commit as
-- the line items it sums; '' stands for "no key" and "no percent discount" (key columns).
-- Decimals are exact TEXT, added by the store's decimal function, never as floats.
CREATE TABLE usage_minutes (
    account           TEXT    NOT NULL,
    minute            INTEGER NOT NULL,
    endpoint_id       TEXT    NOT NULL,
    api_key           TEXT    NOT NULL,
    unit              TEXT    NOT NULL,
    unit_price        TEXT    NOT NULL,
    percent_discount  TEXT    NOT NULL,
    quantity          TEXT    NOT NULL,
    requests          INTEGER NOT NULL,
    subtotal_nanos    INTEGER NOT NULL,
    discount_nanos    INTEGER NOT NULL,
    total_nanos       INTEGER NOT NULL,
    PRIMARY KEY (account, minute, endpoint_id, api_key, unit, unit_price, percent_discount)
) WITHOUT ROWID;

-- Completed requests per account, endpoint and minute, with mergeable histograms of their queue
-- and execution durations in ms (tollgate_core::rollup::Durations: sparse (bucket, count) pairs).
CREATE TABLE activity_minutes (
    account      TEXT    NOT NULL,
    endpoint_id  TEXT    NOT NULL,
    minute       INTEGER NOT NULL,
    requests     INTEGER NOT NULL,
    successes    INTEGER NOT NULL,
    user_errors  INTEGER NOT NULL,
    errors       INTEGER NOT NULL,
    billable_ms  INTEGER NOT NULL,
    prepare_ms   BLOB    NOT NULL,
    duration_ms  BLOB    NOT NULL,
    PRIMARY KEY (account, endpoint_id, minute)
) WITHOUT ROWID;
