-- tollgate schema, version 10: payment history. A paid purchase finds its top-up invoice by
-- (account, purchase_id); the history pages purchases by purchases_by_time, whose entries
-- also hold the purchase id (the table's key), so (account, created_at, purchase_id) is ordered.
CREATE INDEX invoices_by_purchase ON invoices (account, purchase_id);
