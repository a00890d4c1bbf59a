-- tollgate schema for PostgreSQL, version 4 (SQLite's version 8): invoices. An invoice's
-- number is `<prefix>-<year>-<seq>`, its seq taken from the year's counter row, updated (and so
-- locked until commit) by the statement that issues it: gapless and in issue order across
-- servers, and a batch rolled back takes no number.
CREATE TABLE invoice_counters (
    year      BIGINT  PRIMARY KEY,
    last_seq  BIGINT  NOT NULL
);

CREATE TABLE invoices (
    year               BIGINT  NOT NULL,
    seq                BIGINT  NOT NULL,
    prefix             TEXT COLLATE "C" NOT NULL,
    account            TEXT COLLATE "C" NOT NULL,
    kind               TEXT    NOT NULL,
    status             TEXT    NOT NULL,
    issued_at          BIGINT  NOT NULL,
    period_start       BIGINT  NOT NULL,
    period_end         BIGINT  NOT NULL,
    total_nanos        BIGINT  NOT NULL,
    purchase_id        TEXT COLLATE "C",
    PRIMARY KEY (year, seq)
);

CREATE INDEX invoices_by_account ON invoices (account, year, seq);
