-- tollgate schema, version 7: statements and credit activity, as in SQLite (see its
-- 0011_statements.sql): per account and UTC day of the ledger's time, the signed sums of each
-- kind of movement and the closing balance; the same per UTC month; the movements other than
-- usage; usage per day (as charged), endpoint and unit. Written in the billing commit,
-- backfilled here.
--
-- Keyed by account first, as the rollups are here, where SQLite keys them by time first: a
-- PostgreSQL commit writes WAL records of the rows it changed, not the pages they sit on (a
-- page goes whole into the WAL only at its first change after a checkpoint, and is written back
-- by the checkpointer), so an account's row on a page of its own costs a commit little, and the
-- reads stay one range of the account's index entries. The reads are the same SQL on both.
CREATE TABLE balance_days (
    account            TEXT COLLATE "C" NOT NULL,
    day                BIGINT NOT NULL,
    purchases_nanos    BIGINT NOT NULL,
    grants_nanos       BIGINT NOT NULL,
    usage_nanos        BIGINT NOT NULL,
    expired_nanos      BIGINT NOT NULL,
    refunds_nanos      BIGINT NOT NULL,
    disputes_nanos     BIGINT NOT NULL,
    adjustments_nanos  BIGINT NOT NULL,
    closing_nanos      BIGINT NOT NULL,
    PRIMARY KEY (account, day)
);

CREATE TABLE balance_months (
    account            TEXT COLLATE "C" NOT NULL,
    month              BIGINT NOT NULL,
    purchases_nanos    BIGINT NOT NULL,
    grants_nanos       BIGINT NOT NULL,
    usage_nanos        BIGINT NOT NULL,
    expired_nanos      BIGINT NOT NULL,
    refunds_nanos      BIGINT NOT NULL,
    disputes_nanos     BIGINT NOT NULL,
    adjustments_nanos  BIGINT NOT NULL,
    closing_nanos      BIGINT NOT NULL,
    PRIMARY KEY (account, month)
);

CREATE TABLE balance_movements (
    id            BIGSERIAL PRIMARY KEY,
    account       TEXT COLLATE "C" NOT NULL,
    at            BIGINT NOT NULL,
    kind          TEXT   NOT NULL,
    amount_nanos  BIGINT NOT NULL,
    reference     TEXT   NOT NULL
);
CREATE INDEX balance_movements_by_time ON balance_movements (account, at, id);

CREATE TABLE usage_days (
    account      TEXT COLLATE "C" NOT NULL,
    day          BIGINT  NOT NULL,
    endpoint_id  TEXT COLLATE "C" NOT NULL,
    unit         TEXT COLLATE "C" NOT NULL,
    quantity     NUMERIC NOT NULL,
    requests     BIGINT  NOT NULL,
    cost_nanos   BIGINT  NOT NULL,
    PRIMARY KEY (account, day, endpoint_id, unit)
);

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
           CAST(SUM(CASE WHEN kind = 'purchase' THEN amount ELSE 0 END) AS BIGINT) AS purchases,
           CAST(SUM(CASE WHEN kind = 'grant' THEN amount ELSE 0 END) AS BIGINT) AS grants,
           CAST(SUM(CASE WHEN kind IN ('post', 'charge') THEN amount ELSE 0 END) AS BIGINT)
             AS used,
           CAST(SUM(CASE WHEN kind = 'credit_expiry' THEN amount ELSE 0 END) AS BIGINT)
             AS expired,
           CAST(SUM(CASE WHEN kind = 'adjustment' THEN amount ELSE 0 END) AS BIGINT)
             AS adjustments,
           CAST(SUM(amount) AS BIGINT) AS net
    FROM moves GROUP BY account, day)
SELECT account, day, purchases, grants, used, expired, 0, 0, adjustments,
       CAST(SUM(net) OVER (PARTITION BY account ORDER BY day) AS BIGINT)
FROM days;

INSERT INTO balance_months
WITH m AS (
    SELECT account,
           CAST(EXTRACT(EPOCH FROM date_trunc('month', to_timestamp(day / 1000)
                                                       AT TIME ZONE 'UTC')) AS BIGINT) * 1000
             AS month,
           CAST(SUM(purchases_nanos) AS BIGINT) AS purchases,
           CAST(SUM(grants_nanos) AS BIGINT) AS grants,
           CAST(SUM(usage_nanos) AS BIGINT) AS used,
           CAST(SUM(expired_nanos) AS BIGINT) AS expired,
           CAST(SUM(refunds_nanos) AS BIGINT) AS refunds,
           CAST(SUM(disputes_nanos) AS BIGINT) AS disputes,
           CAST(SUM(adjustments_nanos) AS BIGINT) AS adjustments, MAX(day) AS last
    FROM balance_days GROUP BY 1, 2)
SELECT m.account, m.month, m.purchases, m.grants, m.used, m.expired, m.refunds, m.disputes,
       m.adjustments, c.closing_nanos
FROM m JOIN balance_days c ON c.account = m.account AND c.day = m.last;

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

INSERT INTO usage_days
SELECT l.account, COALESCE(c.at, l.billed_at)
         - ((COALESCE(c.at, l.billed_at) % 86400000) + 86400000) % 86400000,
       l.endpoint_id, l.unit, SUM(CAST(l.quantity AS NUMERIC)), COUNT(*),
       CAST(SUM(l.total_nanos) AS BIGINT)
FROM line_items l
LEFT JOIN (SELECT request_id, MIN(at) AS at FROM transfers
      WHERE kind IN ('post', 'charge') AND request_id IS NOT NULL GROUP BY request_id) c
  ON c.request_id = l.request_id
GROUP BY 1, 2, 3, 4;
