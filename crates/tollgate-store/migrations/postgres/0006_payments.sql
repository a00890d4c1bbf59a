-- tollgate schema, version 6: payment history. Paid purchases in (account, created_at,
-- purchase_id) order for keyset pages, and each one's top-up invoice by (account, purchase_id).
CREATE INDEX purchases_paid_by_time ON purchases (account, created_at, purchase_id) WHERE paid;
CREATE INDEX invoices_by_purchase ON invoices (account, purchase_id);
