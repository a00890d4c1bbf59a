-- tollgate schema, version 8: invoices. An invoice's number is `<prefix>-<year>-<seq>`, its
-- seq taken from the year's counter row in the commit that issues it: gapless, in issue order.
CREATE TABLE invoice_counters (
    year      INTEGER PRIMARY KEY,
    last_seq  INTEGER NOT NULL
);

CREATE TABLE invoices (
    year               INTEGER NOT NULL,
    seq                INTEGER NOT NULL,
    prefix             TEXT    NOT NULL,
    account            TEXT    NOT NULL,
    kind               TEXT    NOT NULL,
    status             TEXT    NOT NULL,
    issued_at          INTEGER NOT NULL,
    period_start       INTEGER NOT NULL,
    period_end         INTEGER NOT NULL,
    total_nanos        INTEGER NOT NULL,
    purchase_id        TEXT,
    PRIMARY KEY (year, seq)
) WITHOUT ROWID;

CREATE INDEX invoices_by_account ON invoices (account, year, seq);
