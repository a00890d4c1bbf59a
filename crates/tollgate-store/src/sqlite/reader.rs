//! The read side: a connection of its own per reader, which never waits for the writer.

use super::load::{get_account, get_request, key_row, load_catalog, price_versions, setting};
use super::rollups;
use super::webhooks;
use crate::rows::{self, Cell, KEY_COLS};
use crate::statements::{self, Arg};
use crate::{
    corrupt, AccountRow, AccountsQuery, ActivityQuery, ActivityRecord, ApiKeyRecord,
    BillingEventsQuery, InvoiceRecord, InvoicesQuery, PaymentRecord, PaymentsQuery, PurchaseEntry,
    PurchasesQuery, Reader, Reconciliation, RequestHistoryQuery, RequestOrder, RequestOutcome,
    Result, RollupQuery, RunnerHistoryQuery, RunnerMinuteTotals, StatementQuery, StatementRows,
    WebSession,
};
use crate::{AttemptRecord, DeliveriesQuery, DeliveryRecord, StoredEvent, WebhookRecord};
use rusqlite::Connection;
use tollgate_core::catalog::{Catalog, PriceVersion};
use tollgate_core::ids::{AccountId, ApiKeyId, PurchaseId, RequestId};
use tollgate_core::machine::{LineItem, PurchaseRecord, RequestRecord};
use tollgate_core::payments::{RefundRecord, TopUpRecord};
use tollgate_core::rollup::{ActivityKey, ActivityTotals, UsageKey, UsageTotals};
use tollgate_core::serverless::RunnerRecord;
use tollgate_core::Timestamp;

/// A read-only connection.
pub struct SqliteReader {
    pub(super) conn: Connection,
}

impl Reader for SqliteReader {
    fn account(&mut self, username: &AccountId, now: Timestamp) -> Result<Option<AccountRow>> {
        get_account(&self.conn, username, now)
    }

    fn request(&mut self, id: &RequestId) -> Result<Option<RequestRecord>> {
        get_request(&self.conn, id)
    }

    fn api_key(&mut self, key_id: &ApiKeyId) -> Result<Option<ApiKeyRecord>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {KEY_COLS} FROM api_keys WHERE key_id = ?1"
        ))?;
        let mut rows = st.query([key_id.as_str()])?;
        match rows.next()? {
            Some(r) => Ok(Some(key_row(r)?)),
            None => Ok(None),
        }
    }

    fn web_session(&mut self, id_sha256: &str) -> Result<Option<WebSession>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {} FROM web_sessions WHERE id_sha256 = ?1",
            rows::WEB_SESSION_COLS
        ))?;
        let mut found = st.query([id_sha256])?;
        match found.next()? {
            Some(r) => Ok(Some(rows::web_session_row(r)?)),
            None => Ok(None),
        }
    }

    fn api_keys(&mut self, account: &AccountId) -> Result<Vec<ApiKeyRecord>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {KEY_COLS} FROM api_keys WHERE account = ?1 ORDER BY created_at, key_id"
        ))?;
        let mut rows = st.query([account.as_str()])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(key_row(r)?);
        }
        Ok(out)
    }

    fn operator_keys(&mut self) -> Result<Vec<ApiKeyRecord>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {KEY_COLS} FROM api_keys WHERE account IS NULL ORDER BY created_at, key_id"
        ))?;
        let mut rows = st.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(key_row(r)?);
        }
        Ok(out)
    }

    fn accounts(&mut self, q: &AccountsQuery, now: Timestamp) -> Result<Vec<AccountRow>> {
        // One read transaction: the page and its rows from the same commit.
        let tx = self.conn.transaction()?;
        let names: Vec<String> = {
            let mut st = tx.prepare_cached(
                "SELECT username FROM accounts WHERE username >= ?1 AND username < ?2 \
                 AND (?3 IS NULL OR username > ?3) ORDER BY username LIMIT ?4",
            )?;
            let rows = st.query_map(
                rusqlite::params![
                    q.prefix,
                    q.prefix_end(),
                    q.after.as_ref().map(|a| a.as_str()),
                    i64::try_from(q.limit).unwrap_or(i64::MAX)
                ],
                |r| r.get(0),
            )?;
            rows.collect::<std::result::Result<_, _>>()?
        };
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let id = crate::parse_id(AccountId::parse, &name)?;
            if let Some(row) = get_account(&tx, &id, now)? {
                out.push(row);
            }
        }
        Ok(out)
    }

    fn load_catalog(&mut self) -> Result<Catalog> {
        load_catalog(&self.conn)
    }

    fn price_versions(&mut self) -> Result<Vec<PriceVersion>> {
        price_versions(&self.conn)
    }

    fn setting(&mut self, key: &str) -> Result<Option<String>> {
        setting(&self.conn, key)
    }

    fn invoices(&mut self, q: &InvoicesQuery) -> Result<Vec<InvoiceRecord>> {
        let (a, s, k, y, n, l) = rows::invoices_args(q);
        let mut st = self.conn.prepare_cached(&rows::invoices_sql(
            |i, _| format!("?{i}"),
            q.account.is_some(),
        ))?;
        let mut rows = st.query(rusqlite::params![a, s, k, y, n, l])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(rows::invoice_row(r)?);
        }
        for i in &mut out {
            invoice_lines(&self.conn, i)?;
        }
        Ok(out)
    }

    fn invoice(&mut self, year: i64, seq: i64) -> Result<Option<InvoiceRecord>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {} FROM invoices WHERE year = ?1 AND seq = ?2",
            rows::INVOICE_COLS
        ))?;
        let mut rows = st.query([year, seq])?;
        let mut found = rows.next()?.map(|r| rows::invoice_row(r)).transpose()?;
        if let Some(i) = &mut found {
            invoice_lines(&self.conn, i)?;
        }
        Ok(found)
    }

    fn payments(&mut self, q: &PaymentsQuery) -> Result<Vec<PaymentRecord>> {
        let (a, t, id, l) = rows::payments_args(q);
        let mut st = self
            .conn
            .prepare_cached(&rows::payments_sql(|i, _| format!("?{i}"), "p.paid = 1"))?;
        let mut rows = st.query(rusqlite::params![a, t, id, l])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(rows::payment_row(r)?);
        }
        Ok(out)
    }

    fn statement(&mut self, q: &StatementQuery) -> Result<StatementRows> {
        statements::statement(&mut SqliteDb(&*self.conn.transaction()?), q)
    }

    fn credit_activity(&mut self, q: &ActivityQuery) -> Result<Vec<ActivityRecord>> {
        statements::credit_activity(&mut SqliteDb(&*self.conn.transaction()?), q)
    }

    fn purchases(&mut self, q: &PurchasesQuery) -> Result<Vec<PurchaseEntry>> {
        let (a, from, to, t, id, l) = rows::purchases_args(q);
        let mut st = self
            .conn
            .prepare_cached(&rows::purchases_sql(|i, _| format!("?{i}")))?;
        let mut rows = st.query(rusqlite::params![a, from, to, t, id, l])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(rows::purchase_entry(r)?);
        }
        Ok(out)
    }

    fn top_up(
        &mut self,
        account: &AccountId,
        top_up_id: &PurchaseId,
    ) -> Result<Option<TopUpRecord>> {
        super::payments::top_up(&self.conn, account, top_up_id)
    }

    fn top_up_by_payment_intent(&mut self, payment_intent: &str) -> Result<Option<TopUpRecord>> {
        super::payments::top_up_by_payment_intent(&self.conn, payment_intent)
    }

    fn refund(
        &mut self,
        account: &AccountId,
        refund_id: &PurchaseId,
    ) -> Result<Option<RefundRecord>> {
        super::payments::refund(&self.conn, account, refund_id)
    }

    fn purchase(
        &mut self,
        account: &AccountId,
        purchase_id: &PurchaseId,
    ) -> Result<Option<PurchaseRecord>> {
        super::payments::purchase(&self.conn, account, purchase_id)
    }

    fn webhooks(&mut self) -> Result<Vec<WebhookRecord>> {
        webhooks::webhooks(&self.conn)
    }

    fn webhook(&mut self, webhook_id: &str) -> Result<Option<WebhookRecord>> {
        webhooks::webhook(&self.conn, webhook_id)
    }

    fn webhook_deliveries(&mut self, q: &DeliveriesQuery) -> Result<Vec<DeliveryRecord>> {
        webhooks::deliveries(&self.conn, q)
    }

    // The delivery and its attempts from the same commit.
    fn webhook_delivery(
        &mut self,
        webhook_id: &str,
        event_seq: i64,
    ) -> Result<Option<(DeliveryRecord, Vec<AttemptRecord>)>> {
        let tx = self.conn.transaction()?;
        webhooks::delivery(&tx, webhook_id, event_seq)
    }

    fn webhook_events(&mut self, after: i64, limit: usize) -> Result<Vec<StoredEvent>> {
        webhooks::events(&self.conn, after, limit)
    }

    // Each read in one read transaction: the fold setting and the rows from the same commit.
    fn usage(&mut self, q: &RollupQuery) -> Result<Vec<(UsageKey, UsageTotals)>> {
        rollups::usage(&*self.conn.transaction()?, q)
    }

    fn activity(&mut self, q: &RollupQuery) -> Result<Vec<(ActivityKey, ActivityTotals)>> {
        rollups::activity(&*self.conn.transaction()?, q)
    }

    fn runner_history(
        &mut self,
        q: &RunnerHistoryQuery,
    ) -> Result<Vec<(Timestamp, RunnerMinuteTotals)>> {
        let mut st = self
            .conn
            .prepare_cached(&rows::runner_history_sql(|i, _| format!("?{i}")))?;
        let mut found = st.query(rusqlite::params![
            q.account.as_str(),
            q.app.as_str(),
            q.from.0,
            q.to.0
        ])?;
        let mut out = Vec::new();
        while let Some(r) = found.next()? {
            out.push(rows::runner_minute_row(r)?);
        }
        Ok(out)
    }

    fn runners(&mut self, account: &AccountId, limit: usize) -> Result<Vec<RunnerRecord>> {
        let mut st = self
            .conn
            .prepare_cached(&rows::runners_sql(|i, _| format!("?{i}")))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut found = st.query(rusqlite::params![account.as_str(), limit])?;
        let mut out = Vec::new();
        while let Some(r) = found.next()? {
            out.push(rows::runner_row(r)?);
        }
        Ok(out)
    }

    fn billing_events(&mut self, q: &BillingEventsQuery) -> Result<Vec<LineItem>> {
        rollups::billing_events(&self.conn, q)
    }

    fn request_history(&mut self, q: &RequestHistoryQuery) -> Result<Vec<RequestRecord>> {
        let (sql, args) = request_history_sql(q);
        let mut st = self.conn.prepare_cached(&sql)?;
        let mut rows = st.query(rusqlite::params_from_iter(args))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(super::load::request_row(r)?);
        }
        Ok(out)
    }

    fn gateway_candidates(
        &mut self,
        endpoint: &tollgate_core::ids::EndpointId,
        now: Timestamp,
        per_account: usize,
        limit: usize,
    ) -> Result<Vec<crate::GatewayCandidate>> {
        crate::gateway::candidates(&mut SqliteDb(&self.conn), endpoint, now, per_account, limit)
    }

    fn gateway_request(&mut self, id: &RequestId) -> Result<Option<crate::GatewayView>> {
        crate::gateway::view(&mut SqliteDb(&*self.conn.transaction()?), id)
    }

    fn reconcile(&mut self) -> Result<Reconciliation> {
        // One read transaction: every query sees the same commit.
        let tx = self.conn.transaction()?;
        let rec = rows::reconcile(&mut |sql| {
            let mut st = tx.prepare(sql)?;
            let width = st.column_count();
            let mut rows = st.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let mut row = Vec::with_capacity(width);
                for i in 0..width {
                    row.push(match r.get::<_, rusqlite::types::Value>(i)? {
                        rusqlite::types::Value::Integer(v) => Cell::Int(v),
                        rusqlite::types::Value::Text(t) => Cell::Text(t),
                        other => return Err(corrupt("reconciliation", format!("{other:?}"))),
                    });
                }
                out.push(row);
            }
            Ok(out)
        })?;
        let mut rec = rec;
        statements::mismatches(&mut SqliteDb(&tx), &mut rec)?;
        Ok(rec)
    }
}

/// The request history read's SQL and its parameters.
pub(crate) fn request_history_sql(
    q: &RequestHistoryQuery,
) -> (String, Vec<rusqlite::types::Value>) {
    // ?1 the account, ?2 the endpoint, ?3 and ?4 the range of end times, ?5 the limit,
    // then the request id and the keyset position when given. A range of the
    // requests_by_endpoint index; ordered by duration, the range is sorted.
    let key = match q.order {
        RequestOrder::EndedAt => "finished_at",
        RequestOrder::Duration => "(finished_at - submitted_at)",
    };
    let mut args: Vec<rusqlite::types::Value> = vec![
        q.account.as_str().to_string().into(),
        q.endpoint.as_str().to_string().into(),
        q.from.0.into(),
        q.to.0.into(),
        (q.limit as i64).into(),
    ];
    let mut filters = String::new();
    if let Some(id) = &q.request_id {
        args.push(id.as_str().to_string().into());
        filters.push_str(&format!(" AND request_id = ?{}", args.len()));
    }
    if let Some((at, id)) = &q.after {
        args.push((*at).into());
        args.push(id.as_str().to_string().into());
        filters.push_str(&format!(
            " AND ({key}, request_id) < (?{}, ?{})",
            args.len() - 1,
            args.len()
        ));
    }
    let code = "json_extract(completion, '$.status_code')";
    filters.push_str(&match q.outcome {
        None => String::new(),
        Some(RequestOutcome::Success) => " AND status = 'COMPLETED'".to_string(),
        Some(RequestOutcome::UserError) => {
            format!(" AND status = 'FAILED' AND {code} < 500")
        }
        Some(RequestOutcome::Error) => {
            format!(" AND (status = 'EXPIRED' OR (status = 'FAILED' AND {code} >= 500))")
        }
    });
    let sql = format!(
        "SELECT {} FROM requests INDEXED BY requests_by_endpoint \
         WHERE account = ?1 AND endpoint_id = ?2 AND finished_at IS NOT NULL \
         AND finished_at >= ?3 AND finished_at < ?4{filters} \
         ORDER BY {key} DESC, request_id DESC LIMIT ?5",
        rows::REQUEST_COLS
    );
    (sql, args)
}

/// A read transaction as the statement reads use it.
pub(crate) struct SqliteDb<'a>(pub(crate) &'a rusqlite::Connection);

impl statements::Db for SqliteDb<'_> {
    fn ph(&self, i: usize, _: &str) -> String {
        format!("?{i}")
    }

    fn dec_sum(&self, col: &str) -> String {
        format!("tollgate_dec_sum({col})")
    }

    fn each(
        &mut self,
        sql: &str,
        args: &[Arg],
        row: &mut dyn FnMut(&dyn rows::Get) -> Result<()>,
    ) -> Result<()> {
        let mut st = self.0.prepare_cached(sql)?;
        let values = args.iter().map(Arg::sqlite);
        let mut rows = st.query(rusqlite::params_from_iter(values))?;
        while let Some(r) = rows.next()? {
            row(r)?;
        }
        Ok(())
    }
}

/// A usage invoice's lines (a top-up invoice has none stored).
fn invoice_lines(conn: &Connection, i: &mut InvoiceRecord) -> Result<()> {
    if i.kind != tollgate_core::machine::InvoiceKind::Usage {
        return Ok(());
    }
    let mut st = conn.prepare_cached(&rows::invoice_lines_sql(|i, _| format!("?{i}")))?;
    let mut rows = st.query([i.year, i.seq])?;
    while let Some(r) = rows.next()? {
        i.lines.push(rows::invoice_line_row(r)?);
    }
    Ok(())
}
