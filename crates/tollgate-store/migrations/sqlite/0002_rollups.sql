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

-- The rollups: usage (fal's usage grouping) and activity (completed requests) per account, per
-- minute and per hour, written by the same commit as the line items they sum. `slot` is the
-- start of the minute (or hour), UTC, in ms. Keyed by slot first: a batch's rows all land in
-- the current slot, a few pages, however many accounts it touched; a read seeks (slot,
-- account) slot by slot, hour rows where the buckets allow. '' stands for "no key" and "no
-- percent discount" (key columns). A row of a blended price (tokens, first blocks, add-ons,
-- cost steps: every request has its own effective rate) has unit_price '' and the price
-- version in blend_version; other rows have blend_version 0. Decimals are exact TEXT, added by the store's decimal
-- function, never as floats; durations are tollgate_core::rollup::Durations histograms
-- (sparse (bucket, count) pairs).
CREATE TABLE usage_minutes (
    slot              INTEGER NOT NULL,
    account           TEXT    NOT NULL,
    endpoint_id       TEXT    NOT NULL,
    api_key           TEXT    NOT NULL,
    unit              TEXT    NOT NULL,
    unit_price        TEXT    NOT NULL,
    blend_version     INTEGER NOT NULL,
    percent_discount  TEXT    NOT NULL,
    quantity          TEXT    NOT NULL,
    requests          INTEGER NOT NULL,
    subtotal_nanos    INTEGER NOT NULL,
    discount_nanos    INTEGER NOT NULL,
    total_nanos       INTEGER NOT NULL,
    PRIMARY KEY (slot, account, endpoint_id, api_key, unit, unit_price, blend_version,
                 percent_discount)
) WITHOUT ROWID;
CREATE TABLE usage_hours (
    slot              INTEGER NOT NULL,
    account           TEXT    NOT NULL,
    endpoint_id       TEXT    NOT NULL,
    api_key           TEXT    NOT NULL,
    unit              TEXT    NOT NULL,
    unit_price        TEXT    NOT NULL,
    blend_version     INTEGER NOT NULL,
    percent_discount  TEXT    NOT NULL,
    quantity          TEXT    NOT NULL,
    requests          INTEGER NOT NULL,
    subtotal_nanos    INTEGER NOT NULL,
    discount_nanos    INTEGER NOT NULL,
    total_nanos       INTEGER NOT NULL,
    PRIMARY KEY (slot, account, endpoint_id, api_key, unit, unit_price, blend_version,
                 percent_discount)
) WITHOUT ROWID;

CREATE TABLE activity_minutes (
    slot         INTEGER NOT NULL,
    account      TEXT    NOT NULL,
    endpoint_id  TEXT    NOT NULL,
    requests     INTEGER NOT NULL,
    successes    INTEGER NOT NULL,
    user_errors  INTEGER NOT NULL,
    errors       INTEGER NOT NULL,
    billable_ms  INTEGER NOT NULL,
    prepare_ms   BLOB    NOT NULL,
    duration_ms  BLOB    NOT NULL,
    PRIMARY KEY (slot, account, endpoint_id)
) WITHOUT ROWID;
CREATE TABLE activity_hours (
    slot         INTEGER NOT NULL,
    account      TEXT    NOT NULL,
    endpoint_id  TEXT    NOT NULL,
    requests     INTEGER NOT NULL,
    successes    INTEGER NOT NULL,
    user_errors  INTEGER NOT NULL,
    errors       INTEGER NOT NULL,
    billable_ms  INTEGER NOT NULL,
    prepare_ms   BLOB    NOT NULL,
    duration_ms  BLOB    NOT NULL,
    PRIMARY KEY (slot, account, endpoint_id)
) WITHOUT ROWID;
