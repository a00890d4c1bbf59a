-- tollgate schema, version 6: how an account pays is a term, versioned with the others.
--
-- Every version in `accounts.terms` gains `"billing"` ("prepaid" or "invoice"), taken from the
-- column it replaces; an invoice-billed account with no version gets one, in force from the
-- beginning, with the default terms otherwise (a prepaid account with default terms has none,
-- as before). Later versions may also carry `"low_balance_nanos"` and `"machine_prices"`.
UPDATE accounts SET terms = (
        SELECT json_group_array(json_set(v.value, '$.billing', accounts.billing))
        FROM json_each(accounts.terms) AS v)
    WHERE terms <> '[]';
UPDATE accounts SET terms = json_array(json_object(
        'effective_from', 0,
        'discounts', json_object(),
        'concurrency_override', NULL,
        'lock_threshold_nanos', 0,
        'billing', 'invoice'))
    WHERE terms = '[]' AND billing = 'invoice';
ALTER TABLE accounts DROP COLUMN billing;
