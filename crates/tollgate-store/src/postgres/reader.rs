//! The read side: a bounded pool of connections per process, each query on one of them.

use super::load::{
    key_row, load_accounts, load_catalog, load_requests, price_versions, request_row, setting,
};
use super::{rollups, webhooks, Pool, Run};
use crate::rows::{self, Cell, KEY_COLS, REQUEST_COLS};
use crate::statements::{self, Arg};
use crate::{
    AccountRow, AccountsQuery, ActivityQuery, ActivityRecord, ApiKeyRecord, BillingEventsQuery,
    InvoiceRecord, InvoicesQuery, PaymentRecord, PaymentsQuery, PurchaseEntry, PurchasesQuery,
    Reader, Reconciliation, RequestHistoryQuery, RequestOrder, RequestOutcome, Result, RollupQuery,
    RunnerHistoryQuery, RunnerMinuteTotals, StatementQuery, StatementRows, StoreError, WebSession,
};
use crate::{AttemptRecord, DeliveriesQuery, DeliveryRecord, StoredEvent, WebhookRecord};
use ::postgres::types::ToSql;
use ::postgres::{Client, NoTls, Transaction};
use r2d2_postgres::PostgresConnectionManager;
use tollgate_core::catalog::{Catalog, PriceVersion};
use tollgate_core::ids::{AccountId, ApiKeyId, PurchaseId, RequestId};
use tollgate_core::machine::{LineItem, PurchaseRecord, RequestRecord};
use tollgate_core::payments::{RefundRecord, TopUpRecord};
use tollgate_core::rollup::{ActivityKey, ActivityTotals, UsageKey, UsageTotals};
use tollgate_core::serverless::RunnerRecord;
use tollgate_core::Timestamp;

/// The process's read connections. The driver closes a connection by blocking on a runtime of
/// its own, which an async runtime refuses on its threads, and the last handle may be dropped
/// on one (with its engine): so a handle lets go of the pool on a thread of its own.
#[derive(Clone)]
pub(super) struct ReadPool(pub(super) Option<Pool>);

impl ReadPool {
    fn get(&self) -> Result<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>> {
        self.0
            .as_ref()
            .expect("pool until dropped")
            .get()
            .map_err(|e| StoreError::database(format!("no read connection: {e}"), e))
    }
}

impl Drop for ReadPool {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            let _ = std::thread::Builder::new()
                .name("tollgate-pool-close".into())
                .spawn(move || drop(pool));
        }
    }
}

/// A read handle: each query takes a connection from the process's bounded pool.
pub struct PgReader {
    pub(super) pool: ReadPool,
}

impl PgReader {
    fn conn(&self) -> Result<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>> {
        self.pool.get()
    }
}

/// A read-only transaction that sees one commit throughout.
fn snapshot(c: &mut Client) -> Result<Transaction<'_>> {
    Ok(c.build_transaction()
        .isolation_level(::postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?)
}

impl Reader for PgReader {
    fn account(&mut self, username: &AccountId, now: Timestamp) -> Result<Option<AccountRow>> {
        let mut c = self.conn()?;
        let mut tx = snapshot(&mut c)?;
        let mut rows = load_accounts(&mut tx, &[username.as_str()], now, false)?;
        tx.commit()?;
        Ok(rows.pop())
    }

    fn request(&mut self, id: &RequestId) -> Result<Option<RequestRecord>> {
        Ok(load_requests(&mut *self.conn()?, &[id.as_str()])?.pop())
    }

    fn api_key(&mut self, key_id: &ApiKeyId) -> Result<Option<ApiKeyRecord>> {
        self.conn()?
            .rows(
                &format!("SELECT {KEY_COLS} FROM api_keys WHERE key_id = $1"),
                &[&key_id.as_str()],
            )?
            .first()
            .map(key_row)
            .transpose()
    }

    fn web_session(&mut self, id_sha256: &str) -> Result<Option<WebSession>> {
        self.conn()?
            .rows(
                &format!(
                    "SELECT {} FROM web_sessions WHERE id_sha256 = $1",
                    rows::WEB_SESSION_COLS
                ),
                &[&id_sha256],
            )?
            .first()
            .map(|r| rows::web_session_row(r))
            .transpose()
    }

    fn api_keys(&mut self, account: &AccountId) -> Result<Vec<ApiKeyRecord>> {
        self.conn()?
            .rows(
                &format!(
                    "SELECT {KEY_COLS} FROM api_keys WHERE account = $1 ORDER BY created_at, key_id"
                ),
                &[&account.as_str()],
            )?
            .iter()
            .map(key_row)
            .collect()
    }

    fn operator_keys(&mut self) -> Result<Vec<ApiKeyRecord>> {
        self.conn()?
            .rows(
                &format!(
                    "SELECT {KEY_COLS} FROM api_keys WHERE account IS NULL \
                     ORDER BY created_at, key_id"
                ),
                &[],
            )?
            .iter()
            .map(key_row)
            .collect()
    }

    fn accounts(&mut self, q: &AccountsQuery, now: Timestamp) -> Result<Vec<AccountRow>> {
        let mut c = self.conn()?;
        // One snapshot: the page and its rows from the same commit.
        let mut tx = snapshot(&mut c)?;
        let names: Vec<String> = tx
            .rows(
                "SELECT username FROM accounts WHERE username >= $1 AND username < $2 \
                 AND ($3::text IS NULL OR username > $3) ORDER BY username LIMIT $4",
                &[
                    &q.prefix,
                    &q.prefix_end(),
                    &q.after.as_ref().map(|a| a.as_str()),
                    &i64::try_from(q.limit).unwrap_or(i64::MAX),
                ],
            )?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()?;
        let ids: Vec<&str> = names.iter().map(String::as_str).collect();
        // In username order, as the page.
        let rows = load_accounts(&mut tx, &ids, now, false)?;
        tx.commit()?;
        Ok(rows)
    }

    fn load_catalog(&mut self) -> Result<Catalog> {
        let mut c = self.conn()?;
        let mut tx = snapshot(&mut c)?;
        let catalog = load_catalog(&mut tx)?;
        tx.commit()?;
        Ok(catalog)
    }

    fn price_versions(&mut self) -> Result<Vec<PriceVersion>> {
        price_versions(&mut *self.conn()?)
    }

    fn setting(&mut self, key: &str) -> Result<Option<String>> {
        setting(&mut *self.conn()?, key)
    }

    fn invoices(&mut self, q: &InvoicesQuery) -> Result<Vec<InvoiceRecord>> {
        let (a, s, k, y, n, l) = rows::invoices_args(q);
        let mut c = self.conn()?;
        let mut out = c
            .rows(
                &rows::invoices_sql(|i, ty| format!("${i}::{ty}"), q.account.is_some()),
                &[&a, &s, &k, &y, &n, &l],
            )?
            .iter()
            .map(|r| rows::invoice_row(r))
            .collect::<Result<Vec<_>>>()?;
        for i in &mut out {
            invoice_lines(&mut c, i)?;
        }
        Ok(out)
    }

    fn invoice(&mut self, year: i64, seq: i64) -> Result<Option<InvoiceRecord>> {
        let mut c = self.conn()?;
        let mut found = c
            .rows(
                &format!(
                    "SELECT {} FROM invoices WHERE year = $1 AND seq = $2",
                    rows::INVOICE_COLS
                ),
                &[&year, &seq],
            )?
            .first()
            .map(|r| rows::invoice_row(r))
            .transpose()?;
        if let Some(i) = &mut found {
            invoice_lines(&mut c, i)?;
        }
        Ok(found)
    }

    fn payments(&mut self, q: &PaymentsQuery) -> Result<Vec<PaymentRecord>> {
        let (a, t, id, l) = rows::payments_args(q);
        self.conn()?
            .rows(
                &rows::payments_sql(|i, ty| format!("${i}::{ty}"), "p.paid"),
                &[&a, &t, &id, &l],
            )?
            .iter()
            .map(|r| rows::payment_row(r))
            .collect()
    }

    fn statement(&mut self, q: &StatementQuery) -> Result<StatementRows> {
        let mut c = self.conn()?;
        let mut tx = snapshot(&mut c)?;
        let rows = statements::statement(&mut PgDb(&mut tx), q)?;
        tx.commit()?;
        Ok(rows)
    }

    fn credit_activity(&mut self, q: &ActivityQuery) -> Result<Vec<ActivityRecord>> {
        let mut c = self.conn()?;
        let mut tx = snapshot(&mut c)?;
        let rows = statements::credit_activity(&mut PgDb(&mut tx), q)?;
        tx.commit()?;
        Ok(rows)
    }

    fn purchases(&mut self, q: &PurchasesQuery) -> Result<Vec<PurchaseEntry>> {
        let (a, from, to, t, id, l) = rows::purchases_args(q);
        self.conn()?
            .rows(
                &rows::purchases_sql(|i, ty| format!("${i}::{ty}")),
                &[&a, &from, &to, &t, &id, &l],
            )?
            .iter()
            .map(|r| rows::purchase_entry(r))
            .collect()
    }

    fn top_up(
        &mut self,
        account: &AccountId,
        top_up_id: &PurchaseId,
    ) -> Result<Option<TopUpRecord>> {
        super::payments::top_up(&mut *self.conn()?, account, top_up_id)
    }

    fn top_up_by_payment_intent(&mut self, payment_intent: &str) -> Result<Option<TopUpRecord>> {
        super::payments::top_up_by_payment_intent(&mut *self.conn()?, payment_intent)
    }

    fn refund(
        &mut self,
        account: &AccountId,
        refund_id: &PurchaseId,
    ) -> Result<Option<RefundRecord>> {
        super::payments::refund(&mut *self.conn()?, account, refund_id)
    }

    fn purchase(
        &mut self,
        account: &AccountId,
        purchase_id: &PurchaseId,
    ) -> Result<Option<PurchaseRecord>> {
        super::payments::purchase(&mut *self.conn()?, account, purchase_id)
    }

    fn webhooks(&mut self) -> Result<Vec<WebhookRecord>> {
        webhooks::webhooks(&mut *self.conn()?)
    }

    fn webhook(&mut self, webhook_id: &str) -> Result<Option<WebhookRecord>> {
        webhooks::webhook(&mut *self.conn()?, webhook_id)
    }

    fn webhook_deliveries(&mut self, q: &DeliveriesQuery) -> Result<Vec<DeliveryRecord>> {
        webhooks::deliveries(&mut *self.conn()?, q)
    }

    // The delivery and its attempts from the same commit.
    fn webhook_delivery(
        &mut self,
        webhook_id: &str,
        event_seq: i64,
    ) -> Result<Option<(DeliveryRecord, Vec<AttemptRecord>)>> {
        let mut c = self.conn()?;
        let mut tx = snapshot(&mut c)?;
        let found = webhooks::delivery(&mut tx, webhook_id, event_seq)?;
        tx.commit()?;
        Ok(found)
    }

    fn webhook_events(&mut self, after: i64, limit: usize) -> Result<Vec<StoredEvent>> {
        webhooks::events(&mut *self.conn()?, after, limit)
    }

    fn gateway_candidates(
        &mut self,
        endpoint: &tollgate_core::ids::EndpointId,
        now: Timestamp,
        per_account: usize,
        limit: usize,
    ) -> Result<Vec<crate::GatewayCandidate>> {
        let mut c = self.conn()?;
        let mut tx = snapshot(&mut c)?;
        let rows =
            crate::gateway::candidates(&mut PgDb(&mut tx), endpoint, now, per_account, limit)?;
        tx.commit()?;
        Ok(rows)
    }

    fn gateway_request(&mut self, id: &RequestId) -> Result<Option<crate::GatewayView>> {
        let mut c = self.conn()?;
        let mut tx = snapshot(&mut c)?;
        let view = crate::gateway::view(&mut PgDb(&mut tx), id)?;
        tx.commit()?;
        Ok(view)
    }

    fn reconcile(&mut self) -> Result<Reconciliation> {
        let mut c = self.conn()?;
        let mut tx = snapshot(&mut c)?;
        let rec = rows::reconcile(&mut |sql| {
            let mut out = Vec::new();
            for r in tx.query(sql, &[])? {
                let mut row = Vec::with_capacity(r.len());
                for (i, col) in r.columns().iter().enumerate() {
                    row.push(match *col.type_() {
                        ::postgres::types::Type::INT8 => Cell::Int(r.try_get(i)?),
                        ::postgres::types::Type::INT4 => {
                            Cell::Int(i64::from(r.try_get::<_, i32>(i)?))
                        }
                        _ => Cell::Text(r.try_get(i)?),
                    });
                }
                out.push(row);
            }
            Ok(out)
        })?;
        let mut rec = rec;
        statements::mismatches(&mut PgDb(&mut tx), &mut rec)?;
        tx.commit()?;
        Ok(rec)
    }

    fn usage(&mut self, q: &RollupQuery) -> Result<Vec<(UsageKey, UsageTotals)>> {
        rollups::usage(&mut *self.conn()?, q)
    }

    fn activity(&mut self, q: &RollupQuery) -> Result<Vec<(ActivityKey, ActivityTotals)>> {
        rollups::activity(&mut *self.conn()?, q)
    }

    fn runner_history(
        &mut self,
        q: &RunnerHistoryQuery,
    ) -> Result<Vec<(Timestamp, RunnerMinuteTotals)>> {
        self.conn()?
            .query(
                &rows::runner_history_sql(|i, t| format!("${i}::{t}")),
                &[&q.account.as_str(), &q.app.as_str(), &q.from.0, &q.to.0],
            )?
            .iter()
            .map(|r| rows::runner_minute_row(r))
            .collect()
    }

    fn runners(&mut self, account: &AccountId, limit: usize) -> Result<Vec<RunnerRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.conn()?
            .query(
                &rows::runners_sql(|i, t| format!("${i}::{t}")),
                &[&account.as_str(), &limit],
            )?
            .iter()
            .map(|r| rows::runner_row(r))
            .collect()
    }

    fn billing_events(&mut self, q: &BillingEventsQuery) -> Result<Vec<LineItem>> {
        rollups::billing_events(&mut *self.conn()?, q)
    }

    fn request_history(&mut self, q: &RequestHistoryQuery) -> Result<Vec<RequestRecord>> {
        let (sql, args) = request_history_sql(q);
        let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| &**a as _).collect();
        self.conn()?
            .rows(&sql, &refs)?
            .iter()
            .map(request_row)
            .collect()
    }
}

/// The request history read's SQL and its parameters: a range of the requests_by_endpoint
/// index; ordered by duration, the range is sorted.
pub(crate) fn request_history_sql(q: &RequestHistoryQuery) -> (String, Vec<Box<dyn ToSql + Sync>>) {
    let key = match q.order {
        RequestOrder::EndedAt => "finished_at",
        RequestOrder::Duration => "(finished_at - submitted_at)",
    };
    let code = "(completion::jsonb ->> 'status_code')::int";
    let outcome = match q.outcome {
        None => String::new(),
        Some(RequestOutcome::Success) => " AND status = 'COMPLETED'".to_string(),
        Some(RequestOutcome::UserError) => {
            format!(" AND status = 'FAILED' AND {code} < 500")
        }
        Some(RequestOutcome::Error) => {
            format!(" AND (status = 'EXPIRED' OR (status = 'FAILED' AND {code} >= 500))")
        }
    };
    let (after_at, after_id) = match &q.after {
        Some((at, id)) => (Some(*at), Some(id.as_str().to_string())),
        None => (None, None),
    };
    let request_id = q.request_id.as_ref().map(|r| r.as_str().to_string());
    let sql = format!(
        "SELECT {REQUEST_COLS} FROM requests \
         WHERE account = $1 AND endpoint_id = $2 AND finished_at IS NOT NULL \
         AND finished_at >= $3 AND finished_at < $4 \
         AND ($5::text IS NULL OR request_id = $5) \
         AND ($6::bigint IS NULL OR ({key}, request_id) < ($6, $7::text)){outcome} \
         ORDER BY {key} DESC, request_id DESC LIMIT $8"
    );
    let args: Vec<Box<dyn ToSql + Sync>> = vec![
        Box::new(q.account.as_str().to_string()),
        Box::new(q.endpoint.as_str().to_string()),
        Box::new(q.from.0),
        Box::new(q.to.0),
        Box::new(request_id),
        Box::new(after_at),
        Box::new(after_id),
        Box::new(q.limit as i64),
    ];
    (sql, args)
}

/// A read snapshot as the statement reads use it.
pub(crate) struct PgDb<'a, 'b>(pub(crate) &'a mut Transaction<'b>);

impl statements::Db for PgDb<'_, '_> {
    fn ph(&self, i: usize, ty: &str) -> String {
        format!("${i}::{ty}")
    }

    fn dec_sum(&self, col: &str) -> String {
        format!("CAST(SUM({col}) AS TEXT)")
    }

    fn each(
        &mut self,
        sql: &str,
        args: &[Arg],
        row: &mut dyn FnMut(&dyn rows::Get) -> Result<()>,
    ) -> Result<()> {
        let values: Vec<Box<dyn ::postgres::types::ToSql + Sync>> =
            args.iter().map(Arg::postgres).collect();
        let refs: Vec<&(dyn ::postgres::types::ToSql + Sync)> =
            values.iter().map(|b| &**b as _).collect();
        for r in self.0.query(sql, &refs)? {
            row(&r)?;
        }
        Ok(())
    }
}

/// A usage invoice's lines (a top-up invoice has none stored).
fn invoice_lines(c: &mut Client, i: &mut InvoiceRecord) -> Result<()> {
    if i.kind != tollgate_core::machine::InvoiceKind::Usage {
        return Ok(());
    }
    for r in c.rows(
        &rows::invoice_lines_sql(|i, ty| format!("${i}::{ty}")),
        &[&i.year, &i.seq],
    )? {
        i.lines.push(rows::invoice_line_row(&r)?);
    }
    Ok(())
}
