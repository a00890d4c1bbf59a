-- tollgate schema, version 11: statements and credit activity, written in the billing commit
-- so their reads never scan an account's transfers or line items. Times are the ledger's (a
-- transfer's `at`, the batch's `now`), days are UTC (`day` is midnight, ms), and amounts are
-- signed as they move the balance (credits positive; usage, expiries, debits negative).

-- The tables every billing commit writes (balance_days, balance_months, usage_days) are keyed
-- by time first, as the rollups are: a batch's rows land in the current day's (month's) few
-- pages however many accounts it touched, where keys led by the account would put each account's
-- row for today on a page of its own, between its history and the next account's. Reads seek
-- (day, account) day by day and (month, account) month by month.

-- Per day and account: the sum of each kind of movement and the balance the day's last batch
-- left (batches of one account commit in order, so the last write of a day is its closing).
CREATE TABLE balance_days (
    account            TEXT    NOT NULL,
    day                INTEGER NOT NULL,
    purchases_nanos    INTEGER NOT NULL,
    grants_nanos       INTEGER NOT NULL,
    usage_nanos        INTEGER NOT NULL,
    expired_nanos      INTEGER NOT NULL,
    refunds_nanos      INTEGER NOT NULL,
    disputes_nanos     INTEGER NOT NULL,
    adjustments_nanos  INTEGER NOT NULL,
    closing_nanos      INTEGER NOT NULL,
    PRIMARY KEY (day, account)
) WITHOUT ROWID;

-- The same per UTC month (`month` is midnight of its first day, ms) and account, with the balance
-- the month's last batch left: a statement's opening balance is the closing of the account's
-- last month before it, found by seeking the months backwards (no further than the account's
-- creation), and credit activity finds the months with usage before it seeks their days.
CREATE TABLE balance_months (
    account            TEXT    NOT NULL,
    month              INTEGER NOT NULL,
    purchases_nanos    INTEGER NOT NULL,
    grants_nanos       INTEGER NOT NULL,
    usage_nanos        INTEGER NOT NULL,
    expired_nanos      INTEGER NOT NULL,
    refunds_nanos      INTEGER NOT NULL,
    disputes_nanos     INTEGER NOT NULL,
    adjustments_nanos  INTEGER NOT NULL,
    closing_nanos      INTEGER NOT NULL,
    PRIMARY KEY (month, account)
) WITHOUT ROWID;

-- The movements other than usage (purchases, grants, expiries, adjustments), one row each, in
-- the order they were recorded (`id`), with their reference (purchase or adjustment id). They
-- are few (a batch of usage writes none), so they keep an index by account.
CREATE TABLE balance_movements (
    id            INTEGER PRIMARY KEY,
    account       TEXT    NOT NULL,
    at            INTEGER NOT NULL,
    kind          TEXT    NOT NULL,
    amount_nanos  INTEGER NOT NULL,
    reference     TEXT    NOT NULL
);
CREATE INDEX balance_movements_by_time ON balance_movements (account, at, id);

-- Usage by the day it was charged (not the day it happened), endpoint and unit: a statement's
-- breakdown, which adds up to its usage exactly.
CREATE TABLE usage_days (
    account      TEXT    NOT NULL,
    day          INTEGER NOT NULL,
    endpoint_id  TEXT    NOT NULL,
    unit         TEXT    NOT NULL,
    quantity     TEXT    NOT NULL,
    requests     INTEGER NOT NULL,
    cost_nanos   INTEGER NOT NULL,
    PRIMARY KEY (day, account, endpoint_id, unit)
) WITHOUT ROWID;

-- Backfill from the ledger: every posted transfer of a customer, by day; the closing balance of
-- a day is the sum of everything up to it (the ledger's balance, which the reconciliation
-- checks against the accounts).
INSERT INTO balance_days
WITH moves AS (
    SELECT CASE WHEN credit LIKE 'customer:%' THEN substr(credit, 10) ELSE substr(debit, 10) END
             AS account,
           at - ((at % 86400000) + 86400000) % 86400000 AS day,
           kind,
           CASE WHEN credit LIKE 'customer:%' THEN amount_nanos ELSE -amount_nanos END AS amount
    FROM transfers
    WHERE kind IN ('purchase', 'grant', 'post', 'charge', 'credit_expiry', 'adjustment')
      AND (credit LIKE 'customer:%' OR debit LIKE 'customer:%')),
days AS (
    SELECT account, day,
           SUM(CASE WHEN kind = 'purchase' THEN amount ELSE 0 END) AS purchases,
           SUM(CASE WHEN kind = 'grant' THEN amount ELSE 0 END) AS grants,
           SUM(CASE WHEN kind IN ('post', 'charge') THEN amount ELSE 0 END) AS used,
           SUM(CASE WHEN kind = 'credit_expiry' THEN amount ELSE 0 END) AS expired,
           SUM(CASE WHEN kind = 'adjustment' THEN amount ELSE 0 END) AS adjustments,
           SUM(amount) AS net
    FROM moves GROUP BY account, day)
SELECT account, day, purchases, grants, used, expired, 0, 0, adjustments,
       SUM(net) OVER (PARTITION BY account ORDER BY day)
FROM days;

-- A month's sums are its days' and its closing balance its last day's.
INSERT INTO balance_months
WITH m AS (
    SELECT account,
           CAST(strftime('%s', day / 1000, 'unixepoch', 'start of month') AS INTEGER) * 1000
             AS month,
           SUM(purchases_nanos) AS purchases, SUM(grants_nanos) AS grants,
           SUM(usage_nanos) AS used, SUM(expired_nanos) AS expired,
           SUM(refunds_nanos) AS refunds, SUM(disputes_nanos) AS disputes,
           SUM(adjustments_nanos) AS adjustments, MAX(day) AS last
    FROM balance_days GROUP BY 1, 2)
SELECT m.account, m.month, m.purchases, m.grants, m.used, m.expired, m.refunds, m.disputes,
       m.adjustments, c.closing_nanos
FROM m JOIN balance_days c ON c.day = m.last AND c.account = m.account;

INSERT INTO balance_movements (account, at, kind, amount_nanos, reference)
SELECT account, at, kind, amount, reference FROM (
    SELECT substr(credit, 10) AS account, at,
           CASE WHEN kind = 'purchase' THEN 'purchase' ELSE 'grant' END AS kind,
           amount_nanos AS amount, COALESCE(purchase_id, '') AS reference, id AS ord
    FROM transfers WHERE kind IN ('purchase', 'grant')
    UNION ALL
    SELECT substr(debit, 10), at, 'expiry', -amount_nanos, COALESCE(purchase_id, ''), id
    FROM transfers WHERE kind = 'credit_expiry'
    UNION ALL
    SELECT account, created_at, 'adjustment', amount_nanos, adjustment_id, 0
    FROM adjustments) m
ORDER BY at, ord;

-- A line item's charge was posted when its request was completed (a usage event's line item is
-- dated by the event): its day is its charge transfer's.
INSERT INTO usage_days
SELECT l.account, COALESCE(c.at, l.billed_at)
         - ((COALESCE(c.at, l.billed_at) % 86400000) + 86400000) % 86400000,
       l.endpoint_id, l.unit, tollgate_dec_sum(l.quantity), COUNT(*), SUM(l.total_nanos)
FROM line_items l
LEFT JOIN (SELECT request_id, MIN(at) AS at FROM transfers
      WHERE kind IN ('post', 'charge') AND request_id IS NOT NULL GROUP BY request_id) c
  ON c.request_id = l.request_id
GROUP BY 1, 2, 3, 4;
