-- tollgate schema for PostgreSQL, version 3 (SQLite's version 6): how an account pays is a
-- term, versioned with the others.
--
-- Every version in `accounts.terms` gains `"billing"` ("prepaid" or "invoice"), taken from the
-- column it replaces; an invoice-billed account with no version gets one, in force from the
-- beginning, with the default terms otherwise (a prepaid account with default terms has none,
-- as before). Later versions may also carry `"low_balance_nanos"` and `"machine_prices"`.
UPDATE accounts SET terms = (
        SELECT json_agg(e.v || jsonb_build_object('billing', accounts.billing) ORDER BY e.n)
        FROM jsonb_array_elements(accounts.terms::jsonb) WITH ORDINALITY AS e(v, n))::text
    WHERE terms <> '[]';
UPDATE accounts SET terms = json_build_array(json_build_object(
        'effective_from', 0,
        'discounts', json_build_object(),
        'concurrency_override', NULL,
        'lock_threshold_nanos', 0,
        'billing', 'invoice'))::text
    WHERE terms = '[]' AND billing = 'invoice';
ALTER TABLE accounts DROP COLUMN billing;
