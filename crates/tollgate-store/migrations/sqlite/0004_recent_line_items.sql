-- tollgate schema, version 4: a batch appends its line items in arrival order to
-- line_items_recent (a few pages per batch, however many accounts it touched), and once that
-- holds enough rows one batch moves them all, in key order, into the table clustered by
-- account (several rows per account page, instead of a page per account per batch).
-- `line_items` is the view of both; billing events read each side the way it is ordered.
ALTER TABLE line_items RENAME TO line_items_by_account;
CREATE TABLE line_items_recent (
    id                INTEGER PRIMARY KEY,
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
    inference_ms      INTEGER
);
CREATE VIEW line_items AS
    SELECT account, billed_at, request_id, endpoint_id, api_key, price_version, unit, quantity,
           unit_price, percent_discount, subtotal_nanos, discount_nanos, total_nanos, status_code,
           queue_ms, inference_ms
    FROM line_items_by_account
    UNION ALL
    SELECT account, billed_at, request_id, endpoint_id, api_key, price_version, unit, quantity,
           unit_price, percent_discount, subtotal_nanos, discount_nanos, total_nanos, status_code,
           queue_ms, inference_ms
    FROM line_items_recent;
