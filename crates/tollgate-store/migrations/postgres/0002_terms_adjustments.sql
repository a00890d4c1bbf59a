-- tollgate schema for PostgreSQL, version 2 (SQLite's version 5): account terms are
-- versioned, operator adjustments, dispute locks.
--
-- `accounts.terms` holds the account's terms versions as a JSON array, in order of
-- `effective_from` (ms): each `{"effective_from", "discounts", "concurrency_override",
-- "lock_threshold_nanos"}`. An account's terms so far become its first version, in force
-- from the beginning (as they were); an account with default terms has none.
ALTER TABLE accounts ADD COLUMN terms TEXT NOT NULL DEFAULT '[]';
UPDATE accounts SET terms = json_build_array(json_build_object(
        'effective_from', 0,
        'discounts', discounts::json,
        'concurrency_override', concurrency_override,
        'lock_threshold_nanos', lock_threshold_nanos))::text
    WHERE discounts <> '{}' OR concurrency_override IS NOT NULL OR lock_threshold_nanos <> 0;
ALTER TABLE accounts DROP COLUMN lock_threshold_nanos;
ALTER TABLE accounts DROP COLUMN concurrency_override;
ALTER TABLE accounts DROP COLUMN discounts;
-- What is left of the credit operator adjustments added (spent after every purchase lot).
ALTER TABLE accounts ADD COLUMN adjusted_credit_nanos BIGINT NOT NULL DEFAULT 0
    CHECK (adjusted_credit_nanos >= 0);
-- Set while a payment dispute locks the account: since when (ms).
ALTER TABLE accounts ADD COLUMN disputed_since BIGINT;

-- An operator's correction of a balance, and its answer (the idempotency record).
CREATE TABLE adjustments (
    account        TEXT COLLATE "C" NOT NULL REFERENCES accounts (username),
    adjustment_id  TEXT COLLATE "C" NOT NULL,
    amount_nanos   BIGINT  NOT NULL CHECK (amount_nanos <> 0),
    reason         TEXT    NOT NULL,
    created_at     BIGINT  NOT NULL,
    balance_after  BIGINT  NOT NULL,
    locked_after   BOOLEAN NOT NULL,
    PRIMARY KEY (account, adjustment_id)
);
