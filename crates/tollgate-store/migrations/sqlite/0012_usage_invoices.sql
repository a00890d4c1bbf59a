-- tollgate schema, version 12: usage invoices. An account's open usage period lives with its
-- row (what it has charged so far); accounts with charges in it are found by a partial index
-- (the month's close never scans every account). Each billed line item of an invoice-billed
-- account is added to its period's accrual row (endpoint, unit, price, discount, charge month);
-- a close numbers the invoice and moves the period's accrual rows into its lines, in one
-- commit. An invoice's status may change (open -> paid / void) with when and why.
ALTER TABLE accounts ADD COLUMN period_start INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN period_charges INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN period_subtotal_nanos INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN period_discount_nanos INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN period_total_nanos INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN period_last_charge_at INTEGER NOT NULL DEFAULT 0;
CREATE INDEX accounts_with_period_charges ON accounts (username) WHERE period_charges > 0;

ALTER TABLE invoices ADD COLUMN subtotal_nanos INTEGER NOT NULL DEFAULT 0;
ALTER TABLE invoices ADD COLUMN discount_nanos INTEGER NOT NULL DEFAULT 0;
ALTER TABLE invoices ADD COLUMN status_changed_at INTEGER;
ALTER TABLE invoices ADD COLUMN status_reference TEXT;
UPDATE invoices SET subtotal_nanos = total_nanos;
CREATE UNIQUE INDEX invoices_usage_periods ON invoices (account, period_start)
    WHERE kind = 'usage';

CREATE TABLE invoice_accruals (
    account           TEXT    NOT NULL,
    period_start      INTEGER NOT NULL,
    charge_month      INTEGER NOT NULL,
    endpoint_id       TEXT    NOT NULL,
    unit              TEXT    NOT NULL,
    unit_price        TEXT    NOT NULL,
    blend_version     INTEGER NOT NULL,
    percent_discount  TEXT    NOT NULL,
    quantity          TEXT    NOT NULL,
    requests          INTEGER NOT NULL,
    subtotal_nanos    INTEGER NOT NULL,
    discount_nanos    INTEGER NOT NULL,
    total_nanos       INTEGER NOT NULL,
    first_usage_at    INTEGER NOT NULL,
    last_usage_at     INTEGER NOT NULL,
    PRIMARY KEY (account, period_start, charge_month, endpoint_id, unit, unit_price,
                 blend_version, percent_discount)
) WITHOUT ROWID;

CREATE TABLE invoice_lines (
    year              INTEGER NOT NULL,
    seq               INTEGER NOT NULL,
    charge_month      INTEGER NOT NULL,
    endpoint_id       TEXT    NOT NULL,
    unit              TEXT    NOT NULL,
    unit_price        TEXT    NOT NULL,
    blend_version     INTEGER NOT NULL,
    percent_discount  TEXT    NOT NULL,
    quantity          TEXT    NOT NULL,
    requests          INTEGER NOT NULL,
    subtotal_nanos    INTEGER NOT NULL,
    discount_nanos    INTEGER NOT NULL,
    total_nanos       INTEGER NOT NULL,
    first_usage_at    INTEGER NOT NULL,
    last_usage_at     INTEGER NOT NULL,
    PRIMARY KEY (year, seq, charge_month, endpoint_id, unit, unit_price, blend_version,
                 percent_discount)
) WITHOUT ROWID;
