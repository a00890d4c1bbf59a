-- tollgate schema, version 5: account terms are versioned, operator adjustments, dispute locks.
--
-- `accounts.terms` holds the account's terms versions as a JSON array, in order of
-- `effective_from` (ms): each `{"effective_from", "discounts", "concurrency_override",
-- "lock_threshold_nanos"}`. An account's terms so far become its first version, in force
-- from the beginning (as they were); an account with default terms has none.
ALTER TABLE accounts ADD COLUMN terms TEXT NOT NULL DEFAULT '[]';
UPDATE accounts SET terms = json_array(json_object(
        'effective_from', 0,
        'discounts', json(discounts),
        'concurrency_override', concurrency_override,
        'lock_threshold_nanos', lock_threshold_nanos))
    WHERE discounts <> '{}' OR concurrency_override IS NOT NULL OR lock_threshold_nanos <> 0;
ALTER TABLE accounts DROP COLUMN lock_threshold_nanos;
ALTER TABLE accounts DROP COLUMN concurrency_override;
ALTER TABLE accounts DROP COLUMN discounts;
-- What is left of the credit operator adjustments added (spent after every purchase lot).
ALTER TABLE accounts ADD COLUMN adjusted_credit_nanos INTEGER NOT NULL DEFAULT 0
    CHECK (adjusted_credit_nanos >= 0);
-- Set while a payment dispute locks the account: since when (ms).
ALTER TABLE accounts ADD COLUMN disputed_since INTEGER;

-- An operator's correction of a balance, and its answer (the idempotency record).
CREATE TABLE adjustments (
    account        TEXT    NOT NULL REFERENCES accounts (username),
    adjustment_id  TEXT    NOT NULL,
    amount_nanos   INTEGER NOT NULL CHECK (amount_nanos <> 0),
    reason         TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    balance_after  INTEGER NOT NULL,
    locked_after   INTEGER NOT NULL,
    PRIMARY KEY (account, adjustment_id)
) WITHOUT ROWID;
