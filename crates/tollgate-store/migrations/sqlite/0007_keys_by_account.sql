-- tollgate schema, version 7: an account's keys (and the operator keys, `account IS NULL`)
-- are listed in creation order without scanning every key.
CREATE INDEX api_keys_by_account ON api_keys (account, created_at, key_id);
