//! The writer's db transaction: what the engine loads, locks and writes through.

use super::account_cache::CachedAccount;
use super::load::{load_account, load_catalog, request_row, setting};
use super::persist;
use super::webhooks;
use crate::rows::{
    limits_text, runner_event_row, runner_row, terms_text, AdjustmentCols, PurchaseCols,
    ADJUSTMENT_COLS, KEY_COLS, PURCHASE_COLS, REQUEST_COLS, RUNNER_COLS, RUNNER_EVENT_COLS,
    TAKEN_COLS, WEB_SESSION_COLS,
};
use crate::{
    parse_id, to_json, ApiKeyRecord, BillingMode, ClaimedDelivery, DeliveryResult, DueRunner,
    PortalLink, Result, StoreError, Tx, WebSession, WebhookRecord, SETTING_CATALOG_GENERATION,
};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use tollgate_core::catalog::{Catalog, EndpointDef};
use tollgate_core::ids::{
    AccountId, AdjustmentId, ApiKeyId, EndpointId, PurchaseId, RequestId, RunnerEventId, RunnerId,
};
use tollgate_core::limits::LimitState;
use tollgate_core::machine::{
    AccountState, AdjustmentRecord, BatchState, InvoiceStatus, PurchaseRecord, RequestRecord,
};
use tollgate_core::price::PriceRule;
use tollgate_core::serverless::RunnerRecord;
use tollgate_core::terms::TermsSchedule;
use tollgate_core::{Nanos, Timestamp};

/// Counts one more catalog change, in the db transaction that makes it.
fn bump_catalog_generation(conn: &Connection) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO settings (key, value) VALUES (?1, '1') ON CONFLICT (key) \
         DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)",
    )?
    .execute([SETTING_CATALOG_GENERATION])?;
    Ok(())
}

pub(super) struct SqliteTx<'a> {
    pub(super) conn: &'a Connection,
    /// The cache as of the last commit (read-only during the transaction).
    pub(super) cache: &'a mut HashMap<AccountId, CachedAccount>,
    /// Accounts as this transaction leaves them; cached only once it commits.
    pub(super) written: HashMap<AccountId, CachedAccount>,
    /// Accounts changed outside the state machine (terms); dropped once it commits.
    pub(super) forget: Vec<AccountId>,
}

impl Tx for SqliteTx<'_> {
    fn setting(&mut self, key: &str) -> Result<Option<String>> {
        setting(self.conn, key)
    }

    fn load_requests(
        &mut self,
        ids: &[RequestId],
        out: &mut HashMap<RequestId, RequestRecord>,
    ) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        // One statement for the batch: the ids as a JSON array, each looked up in the unique
        // index.
        let list =
            serde_json::to_string(ids).map_err(|e| StoreError::database(e.to_string(), e))?;
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {REQUEST_COLS} FROM requests \
             WHERE request_id IN (SELECT value FROM json_each(?1))"
        ))?;
        let mut rows = st.query([list])?;
        while let Some(r) = rows.next()? {
            let r = request_row(r)?;
            out.insert(r.id.clone(), r);
        }
        Ok(())
    }

    fn lock_accounts(
        &mut self,
        ids: &[AccountId],
        now: Timestamp,
        out: &mut HashMap<AccountId, AccountState>,
    ) -> Result<()> {
        // SQLite has one writer: the IMMEDIATE transaction already excludes other writers.
        for id in ids {
            if let Some(c) = self.cache.get_mut(id) {
                out.insert(id.clone(), c.state_at(now));
                continue;
            }
            if let Some((row, recent_paid)) = load_account(self.conn, id, now)? {
                let mut cached = CachedAccount {
                    state: row.state,
                    recent_paid,
                };
                out.insert(id.clone(), cached.state_at(now));
                self.cache.insert(id.clone(), cached);
            }
        }
        Ok(())
    }

    fn load_purchases(
        &mut self,
        keys: &[(AccountId, PurchaseId)],
        out: &mut HashMap<(AccountId, PurchaseId), PurchaseRecord>,
    ) -> Result<()> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {PURCHASE_COLS}, {TAKEN_COLS} FROM purchases \
             WHERE account = ?1 AND purchase_id = ?2"
        ))?;
        for (account, pid) in keys {
            let mut rows = st.query(params![account.as_str(), pid.as_str()])?;
            if let Some(r) = rows.next()? {
                let p = PurchaseCols::read(r)?.into_record()?;
                out.insert((account.clone(), pid.clone()), p);
            }
        }
        Ok(())
    }

    fn load_adjustments(
        &mut self,
        keys: &[(AccountId, AdjustmentId)],
        out: &mut HashMap<(AccountId, AdjustmentId), AdjustmentRecord>,
    ) -> Result<()> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {ADJUSTMENT_COLS} FROM adjustments WHERE account = ?1 AND adjustment_id = ?2"
        ))?;
        for (account, id) in keys {
            let mut rows = st.query(params![account.as_str(), id.as_str()])?;
            if let Some(r) = rows.next()? {
                let a = AdjustmentCols::read(r)?.into_record()?;
                out.insert((account.clone(), id.clone()), a);
            }
        }
        Ok(())
    }

    fn load_runners(
        &mut self,
        runners: &[RunnerId],
        event_ids: &[RunnerEventId],
        state: &mut BatchState,
    ) -> Result<()> {
        // One statement each: the ids as a JSON array, each looked up in its primary key.
        if !runners.is_empty() {
            let mut st = self.conn.prepare_cached(&format!(
                "SELECT {RUNNER_COLS} FROM runners \
                 WHERE runner_id IN (SELECT value FROM json_each(?1))"
            ))?;
            let mut rows = st.query([crate::to_json(&runners)])?;
            while let Some(r) = rows.next()? {
                let r = runner_row(r)?;
                state.runners.insert(r.id.clone(), r);
            }
        }
        if !event_ids.is_empty() {
            let mut st = self.conn.prepare_cached(&format!(
                "SELECT {RUNNER_EVENT_COLS} FROM runner_events \
                 WHERE event_id IN (SELECT value FROM json_each(?1))"
            ))?;
            let mut rows = st.query([crate::to_json(&event_ids)])?;
            while let Some(r) = rows.next()? {
                let e = runner_event_row(r)?;
                state.runner_events.insert(e.event_id.clone(), e);
            }
        }
        Ok(())
    }

    fn due_runner_settlements(
        &mut self,
        until: Timestamp,
        after: Option<&DueRunner>,
        limit: usize,
    ) -> Result<Vec<DueRunner>> {
        // The partial index of the runners not accounted up to their cap, from the oldest
        // cursor (or from the key after which the sweep's previous page ended).
        let (from, after_id) = after.map_or((i64::MIN, ""), |d| (d.settled_until.0, d.id.as_str()));
        let mut st = self.conn.prepare_cached(
            "SELECT settled_until, runner_id FROM runners INDEXED BY runners_due \
             WHERE settled_until < cap_at AND settled_until < ?1 AND settled_until >= ?2 \
             AND (settled_until > ?2 OR runner_id > ?3) \
             ORDER BY settled_until, runner_id LIMIT ?4",
        )?;
        let rows = st
            .query_map(params![until.0, from, after_id, limit as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(at, id)| {
                Ok(DueRunner {
                    settled_until: Timestamp(at),
                    id: parse_id(RunnerId::parse, &id)?,
                })
            })
            .collect()
    }

    fn due_runners(
        &mut self,
        accounts: &[AccountId],
        before: Timestamp,
    ) -> Result<Vec<RunnerRecord>> {
        if accounts.is_empty() {
            return Ok(Vec::new());
        }
        // The partial index of the runners not accounted up to their cap (every account's
        // runners live now, the few due before `before`), not each account's runners ever.
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {RUNNER_COLS} FROM runners INDEXED BY runners_due \
             WHERE settled_until < cap_at AND settled_until < ?1 \
             AND account IN (SELECT value FROM json_each(?2)) ORDER BY runner_id"
        ))?;
        let mut rows = st.query(params![before.0, crate::to_json(&accounts)])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(runner_row(r)?);
        }
        Ok(out)
    }

    fn db(&mut self) -> Box<dyn crate::statements::Db + '_> {
        Box::new(super::reader::SqliteDb(self.conn))
    }

    fn prune_runner_events(&mut self, before: Timestamp, limit: usize) -> Result<usize> {
        // The oldest page of the `received_at` index (which holds each row's key), then each
        // row by its key.
        let mut st = self.conn.prepare_cached(
            "DELETE FROM runner_events WHERE event_id IN (SELECT event_id FROM runner_events \
             INDEXED BY runner_events_received WHERE received_at < ?1 \
             ORDER BY received_at LIMIT ?2)",
        )?;
        Ok(st.execute(params![before.0, limit as i64])?)
    }

    fn live_runners(
        &mut self,
        accounts: &[AccountId],
        now: Timestamp,
    ) -> Result<Vec<RunnerRecord>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {RUNNER_COLS} FROM runners WHERE account = ?1 AND last_at > ?2 \
             AND cap_at > ?3 AND state <> 'TERMINATED' ORDER BY runner_id"
        ))?;
        let mut out = Vec::new();
        for account in accounts {
            let mut rows = st.query(params![
                account.as_str(),
                crate::rows::live_since(now),
                now.0
            ])?;
            while let Some(r) = rows.next()? {
                out.push(runner_row(r)?);
            }
        }
        Ok(out)
    }

    fn load_payments(&mut self, keys: &crate::PaymentKeys, state: &mut BatchState) -> Result<()> {
        super::payments::load(self.conn, keys, state)
    }

    fn persist(&mut self, s: &BatchState) -> Result<Vec<(i64, i64)>> {
        persist::persist(self, s)
    }

    fn accounts_with_period_charges(
        &mut self,
        after: Option<&AccountId>,
        started_before: Option<Timestamp>,
        limit: usize,
    ) -> Result<Vec<AccountId>> {
        let mut st = self.conn.prepare_cached(
            "SELECT username FROM accounts WHERE period_charges > 0 AND username > ?1 \
             AND period_start < ?2 ORDER BY username LIMIT ?3",
        )?;
        let ids = st
            .query_map(
                params![
                    after.map_or("", |a| a.as_str()),
                    started_before.map_or(i64::MAX, |t| t.0),
                    limit as i64
                ],
                |r| r.get::<_, String>(0),
            )?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        ids.iter().map(|s| parse_id(AccountId::parse, s)).collect()
    }

    fn change_invoice_status(
        &mut self,
        year: i64,
        seq: i64,
        to: InvoiceStatus,
        at: Timestamp,
        reference: &str,
    ) -> Result<Option<InvoiceStatus>> {
        let n = self.conn.execute(
            "UPDATE invoices SET status = ?3, status_changed_at = ?4, status_reference = ?5 \
             WHERE year = ?1 AND seq = ?2 AND status = 'open'",
            params![year, seq, to.as_str(), at.0, reference],
        )?;
        if n == 1 {
            return Ok(None);
        }
        let found: Option<(String, Option<String>)> = self
            .conn
            .query_row(
                "SELECT status, status_reference FROM invoices WHERE year = ?1 AND seq = ?2",
                params![year, seq],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (status, was) = found.ok_or_else(|| {
            StoreError::NotFound(format!(
                "invoice {}",
                crate::InvoiceRecord::id_of(year, seq)
            ))
        })?;
        crate::rows::status_change_refused(&status, was.as_deref(), to, reference)
    }

    fn due_expiries(&mut self, now: Timestamp, limit: usize) -> Result<Vec<RequestId>> {
        let mut st = self.conn.prepare_cached(
            "SELECT request_id FROM requests WHERE hold_expires_at IS NOT NULL \
             AND hold_expires_at <= ?1 ORDER BY hold_expires_at LIMIT ?2",
        )?;
        let ids = st
            .query_map(params![now.0, limit as i64], |r| r.get::<_, String>(0))?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        ids.iter().map(|s| parse_id(RequestId::parse, s)).collect()
    }

    fn due_credit_expiries(&mut self, now: Timestamp, limit: usize) -> Result<Vec<AccountId>> {
        let mut st = self.conn.prepare_cached(
            // Accounts whose due credits are all reserved by holds are left out (nothing of
            // theirs can expire, and they must not crowd out others), unless one of those holds
            // expires in this same sweep, which runs hold expiries first.
            "SELECT DISTINCT p.account FROM purchases p JOIN accounts a ON a.username = p.account \
             WHERE p.remaining_nanos > 0 AND p.expires_at IS NOT NULL AND p.expires_at <= ?1 \
             AND (a.balance_nanos > a.held_nanos OR EXISTS (SELECT 1 FROM requests r \
               WHERE r.hold_expires_at IS NOT NULL AND r.hold_expires_at <= ?1 \
               AND r.account = p.account)) LIMIT ?2",
        )?;
        let ids = st
            .query_map(params![now.0, limit as i64], |r| r.get::<_, String>(0))?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        ids.iter().map(|s| parse_id(AccountId::parse, s)).collect()
    }

    fn due_expiry_notices(
        &mut self,
        now: Timestamp,
        horizon: Timestamp,
        limit: usize,
    ) -> Result<Vec<AccountId>> {
        let mut st = self.conn.prepare_cached(
            "SELECT DISTINCT account FROM purchases \
             WHERE remaining_nanos > 0 AND expires_at IS NOT NULL AND expiry_noticed = 0 \
             AND expires_at > ?1 AND expires_at <= ?2 LIMIT ?3",
        )?;
        let ids = st
            .query_map(params![now.0, horizon.0, limit as i64], |r| {
                r.get::<_, String>(0)
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        ids.iter().map(|s| parse_id(AccountId::parse, s)).collect()
    }

    fn create_account(
        &mut self,
        username: &AccountId,
        billing: BillingMode,
        now: Timestamp,
    ) -> Result<()> {
        let n = self.conn.execute(
            "INSERT INTO accounts (username, created_at, terms) VALUES (?1, ?2, ?3) \
             ON CONFLICT (username) DO NOTHING",
            params![
                username.as_str(),
                now.0,
                terms_text(&TermsSchedule::first(billing))
            ],
        )?;
        if n == 0 {
            return Err(StoreError::AlreadyExists(format!("account {username}")));
        }
        Ok(())
    }

    fn set_account_terms(&mut self, username: &AccountId, terms: &TermsSchedule) -> Result<()> {
        self.forget.push(username.clone());
        let n = self.conn.execute(
            "UPDATE accounts SET terms = ?2 WHERE username = ?1",
            params![username.as_str(), terms_text(terms)],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("account {username}")));
        }
        Ok(())
    }

    fn set_account_limits(&mut self, username: &AccountId, limits: &[LimitState]) -> Result<()> {
        self.forget.push(username.clone());
        let n = self.conn.execute(
            "UPDATE accounts SET limits = ?2 WHERE username = ?1",
            params![username.as_str(), limits_text(limits)],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("account {username}")));
        }
        Ok(())
    }

    fn api_key(&mut self, key_id: &ApiKeyId) -> Result<Option<ApiKeyRecord>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {KEY_COLS} FROM api_keys WHERE key_id = ?1"
        ))?;
        let mut rows = st.query([key_id.as_str()])?;
        match rows.next()? {
            Some(r) => Ok(Some(super::load::key_row(r)?)),
            None => Ok(None),
        }
    }

    fn running_holds(&mut self, account: &AccountId, key: Option<&ApiKeyId>) -> Result<Nanos> {
        // Every request in progress has a hold deadline: the partial index of those.
        let sum: i64 = self.conn.query_row(
            "SELECT COALESCE(SUM(hold_nanos), 0) FROM requests \
             WHERE hold_expires_at IS NOT NULL AND status = 'IN_PROGRESS' AND account = ?1 \
             AND (?2 IS NULL OR api_key = ?2)",
            params![account.as_str(), key.map(|k| k.as_str())],
            |r| r.get(0),
        )?;
        Ok(Nanos(sum))
    }

    fn charged_since(
        &mut self,
        account: &AccountId,
        key: Option<&ApiKeyId>,
        since: Timestamp,
    ) -> Result<Nanos> {
        // The account's range of the clustered table, and the recent table's few pages.
        let sum: i64 = self.conn.query_row(
            "SELECT COALESCE((SELECT SUM(total_nanos) FROM line_items_by_account \
               WHERE account = ?1 AND billed_at >= ?2 AND (?3 IS NULL OR api_key = ?3)), 0) \
             + COALESCE((SELECT SUM(total_nanos) FROM line_items_recent \
               WHERE account = ?1 AND billed_at >= ?2 AND (?3 IS NULL OR api_key = ?3)), 0)",
            params![account.as_str(), since.0, key.map(|k| k.as_str())],
            |r| r.get(0),
        )?;
        Ok(Nanos(sum))
    }

    fn insert_portal_link(&mut self, link: &PortalLink) -> Result<()> {
        let n = self.conn.execute(
            "INSERT INTO portal_links (token_sha256, account, created_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (token_sha256) DO NOTHING",
            params![
                link.token_sha256,
                link.account.as_str(),
                link.created_at.0,
                link.expires_at.0
            ],
        )?;
        if n == 0 {
            return Err(StoreError::AlreadyExists("portal link".into()));
        }
        Ok(())
    }

    fn redeem_portal_link(
        &mut self,
        token_sha256: &str,
        now: Timestamp,
    ) -> Result<Option<AccountId>> {
        let account: Option<String> = self
            .conn
            .query_row(
                "UPDATE portal_links SET used_at = ?2 \
                 WHERE token_sha256 = ?1 AND used_at IS NULL AND expires_at > ?2 \
                 RETURNING account",
                params![token_sha256, now.0],
                |r| r.get(0),
            )
            .optional()?;
        account
            .map(|a| crate::parse_id(AccountId::parse, &a))
            .transpose()
    }

    fn insert_web_session(&mut self, w: &WebSession) -> Result<()> {
        self.conn.execute(
            &format!(
                "INSERT INTO web_sessions ({WEB_SESSION_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            ),
            params![
                w.id_sha256,
                w.account.as_ref().map(|a| a.as_str()),
                w.key_id.as_ref().map(|k| k.as_str()),
                w.csrf,
                w.created_at.0,
                w.expires_at.0,
                w.ended_at.map(|t| t.0)
            ],
        )?;
        Ok(())
    }

    fn end_web_session(&mut self, id_sha256: &str, now: Timestamp) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE web_sessions SET ended_at = ?2 WHERE id_sha256 = ?1 AND ended_at IS NULL",
            params![id_sha256, now.0],
        )?;
        Ok(n > 0)
    }

    fn end_account_sessions(&mut self, account: &AccountId, now: Timestamp) -> Result<usize> {
        Ok(self.conn.execute(
            "UPDATE web_sessions SET ended_at = ?2 WHERE account = ?1 AND ended_at IS NULL",
            params![account.as_str(), now.0],
        )?)
    }

    fn ensure_provider_webhook(&mut self, now: Timestamp) -> Result<bool> {
        webhooks::ensure_provider(self.conn, now)
    }

    fn insert_setting_if_absent(&mut self, key: &str, value: &str) -> Result<String> {
        self.conn.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
            params![key, value],
        )?;
        setting(self.conn, key)?
            .ok_or_else(|| StoreError::Corrupt(format!("setting {key} was not written")))
    }

    fn insert_webhook(&mut self, hook: &WebhookRecord) -> Result<()> {
        webhooks::insert_webhook(self.conn, hook)
    }

    fn delete_webhook(&mut self, webhook_id: &str, now: Timestamp) -> Result<bool> {
        webhooks::delete_webhook(self.conn, webhook_id, now)
    }

    fn claim_deliveries(
        &mut self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
        per_webhook: usize,
    ) -> Result<Vec<ClaimedDelivery>> {
        webhooks::claim(self.conn, now, lease_until, limit, per_webhook)
    }

    fn record_deliveries(&mut self, results: &[DeliveryResult]) -> Result<usize> {
        webhooks::record(self.conn, results)
    }

    fn redeliver(&mut self, webhook_id: &str, event_seq: i64, now: Timestamp) -> Result<bool> {
        webhooks::redeliver(self.conn, webhook_id, event_seq, now)
    }

    fn insert_api_key(&mut self, k: &ApiKeyRecord) -> Result<bool> {
        let n = self.conn.execute(
            &format!(
                "INSERT INTO api_keys ({KEY_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (key_id) DO NOTHING"
            ),
            params![
                k.key_id.as_str(),
                k.account.as_ref().map(|a| a.as_str()),
                k.scope.as_str(),
                k.alias,
                k.secret_sha256,
                k.created_at.0,
                k.revoked_at.map(|t| t.0)
            ],
        )?;
        Ok(n > 0)
    }

    fn revoke_api_key(
        &mut self,
        key_id: &ApiKeyId,
        account: Option<&AccountId>,
        now: Timestamp,
    ) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE api_keys SET revoked_at = ?3 WHERE key_id = ?1 AND account IS ?2 \
             AND revoked_at IS NULL",
            params![key_id.as_str(), account.map(|a| a.as_str()), now.0],
        )?;
        Ok(n > 0)
    }

    fn upsert_endpoint(&mut self, def: &EndpointDef, now: Timestamp) -> Result<()> {
        self.conn.execute(
            "INSERT INTO endpoints (endpoint_id, def, updated_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (endpoint_id) DO UPDATE SET def = excluded.def, \
             updated_at = excluded.updated_at",
            params![def.id.as_str(), to_json(def), now.0],
        )?;
        bump_catalog_generation(self.conn)
    }

    fn insert_price_version(
        &mut self,
        endpoint: &EndpointId,
        account: Option<&AccountId>,
        effective_from: Timestamp,
        rule: &PriceRule,
        now: Timestamp,
    ) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO price_versions (endpoint_id, account, effective_from, rule, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                endpoint.as_str(),
                account.map(|a| a.as_str()),
                effective_from.0,
                to_json(rule),
                now.0
            ],
        )?;
        let id = self.conn.last_insert_rowid();
        bump_catalog_generation(self.conn)?;
        Ok(id)
    }

    fn set_setting(&mut self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        bump_catalog_generation(self.conn)
    }

    fn load_catalog(&mut self) -> Result<Catalog> {
        load_catalog(self.conn)
    }
}
