//! The writer's db transaction: what the engine loads, locks and writes through.

use super::load::{load_accounts, load_catalog, load_requests, setting};
use super::{persist, webhooks, Run};
use crate::rows::{
    limits_text, runner_event_row, runner_row, terms_text, AdjustmentCols, PurchaseCols,
    ADJUSTMENT_COLS, KEY_COLS, PURCHASE_COLS, RUNNER_COLS, RUNNER_EVENT_COLS, TAKEN_COLS,
    WEB_SESSION_COLS,
};
use crate::{
    parse_id, to_json, ApiKeyRecord, BillingMode, ClaimedDelivery, DbError, DeliveryResult,
    DueRunner, PortalLink, Result, StoreError, Tx, WebSession, WebhookRecord,
    SETTING_CATALOG_GENERATION,
};
use ::postgres::types::ToSql;
use ::postgres::{Row, Statement, Transaction};
use std::collections::{HashMap, HashSet};
use tollgate_core::catalog::{Catalog, EndpointDef};
use tollgate_core::ids::{
    AccountId, AdjustmentId, ApiKeyId, EndpointId, PurchaseId, RequestId, RunnerEventId, RunnerId,
};
use tollgate_core::limits::LimitState;
use tollgate_core::machine::{
    AccountState, AdjustmentRecord, BatchState, InvoiceStatus, PurchaseRecord, RequestRecord,
};
use tollgate_core::payments::PaymentProfile;
use tollgate_core::price::PriceRule;
use tollgate_core::serverless::RunnerRecord;
use tollgate_core::terms::TermsSchedule;
use tollgate_core::{Nanos, Timestamp};

/// The writer's db transaction: statements are prepared once per connection.
pub(super) struct PgTx<'a, 'b> {
    pub(super) tx: &'a mut Transaction<'b>,
    pub(super) statements: &'a mut HashMap<String, Statement>,
    /// Requests that exist, as last loaded: they are updated, the others inserted (and a
    /// request another process inserted meanwhile then fails the insert, and the batch is run
    /// again).
    pub(super) found: HashSet<RequestId>,
    /// The payment profiles of the accounts locked, those not the default: a batch writes the
    /// profiles it changed, and only those (see `persist::accounts`).
    pub(super) profiles: HashMap<AccountId, PaymentProfile>,
}

impl PgTx<'_, '_> {
    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql)?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

impl Run for PgTx<'_, '_> {
    fn rows(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let st = self.statement(sql)?;
        Ok(self.tx.query(&st, params)?)
    }
    fn exec(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let st = self.statement(sql)?;
        Ok(self.tx.execute(&st, params)?)
    }
}

/// Counts one more catalog change, in the db transaction that makes it.
fn bump_catalog_generation(c: &mut dyn Run) -> Result<()> {
    c.exec(
        "INSERT INTO settings (key, value) VALUES ($1, '1') ON CONFLICT (key) \
         DO UPDATE SET value = CAST(CAST(settings.value AS BIGINT) + 1 AS TEXT)",
        &[&SETTING_CATALOG_GENERATION],
    )?;
    Ok(())
}

impl Tx for PgTx<'_, '_> {
    fn is_shared(&self) -> bool {
        true
    }

    fn setting(&mut self, key: &str) -> Result<Option<String>> {
        setting(self, key)
    }

    fn load_requests(
        &mut self,
        ids: &[RequestId],
        out: &mut HashMap<RequestId, RequestRecord>,
    ) -> Result<()> {
        let ids: Vec<&str> = ids.iter().map(|r| r.as_str()).collect();
        for r in load_requests(self, &ids)? {
            self.found.insert(r.id.clone());
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
        let names: Vec<&str> = ids.iter().map(|a| a.as_str()).collect();
        for row in load_accounts(self, &names, now, true)? {
            let id = row.state.credit.id.clone();
            if row.state.payment != PaymentProfile::default() {
                self.profiles.insert(id.clone(), row.state.payment.clone());
            } else {
                self.profiles.remove(&id);
            }
            out.insert(id, row.state);
        }
        Ok(())
    }

    fn load_purchases(
        &mut self,
        keys: &[(AccountId, PurchaseId)],
        out: &mut HashMap<(AccountId, PurchaseId), PurchaseRecord>,
    ) -> Result<()> {
        for (account, pid) in keys {
            let found = self.rows(
                &format!(
                    "SELECT {PURCHASE_COLS}, {TAKEN_COLS} FROM purchases \
                     WHERE account = $1 AND purchase_id = $2"
                ),
                &[&account.as_str(), &pid.as_str()],
            )?;
            if let Some(r) = found.first() {
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
        for (account, id) in keys {
            let found = self.rows(
                &format!(
                    "SELECT {ADJUSTMENT_COLS} FROM adjustments \
                     WHERE account = $1 AND adjustment_id = $2"
                ),
                &[&account.as_str(), &id.as_str()],
            )?;
            if let Some(r) = found.first() {
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
        if !runners.is_empty() {
            let ids: Vec<&str> = runners.iter().map(|r| r.as_str()).collect();
            for r in self.rows(
                &format!("SELECT {RUNNER_COLS} FROM runners WHERE runner_id = ANY($1)"),
                &[&ids],
            )? {
                let r = runner_row(&r)?;
                state.runners.insert(r.id.clone(), r);
            }
        }
        if !event_ids.is_empty() {
            let ids: Vec<&str> = event_ids.iter().map(|e| e.as_str()).collect();
            for r in self.rows(
                &format!("SELECT {RUNNER_EVENT_COLS} FROM runner_events WHERE event_id = ANY($1)"),
                &[&ids],
            )? {
                let e = runner_event_row(&r)?;
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
        // cursor (or from the key after which the sweep's previous page ended). Servers
        // sweeping together may find the same runners: each settles under the account's lock,
        // and the second finds nothing left to settle.
        let (from, after_id) = after.map_or((i64::MIN, ""), |d| (d.settled_until.0, d.id.as_str()));
        self.rows(
            "SELECT settled_until, runner_id FROM runners WHERE settled_until < cap_at \
             AND settled_until < $1 AND (settled_until, runner_id) > ($2, $3) \
             ORDER BY settled_until, runner_id LIMIT $4",
            &[&until.0, &from, &after_id, &(limit as i64)],
        )?
        .iter()
        .map(|r| {
            Ok(DueRunner {
                settled_until: Timestamp(r.try_get(0)?),
                id: parse_id(RunnerId::parse, r.try_get(1)?)?,
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
        let names: Vec<&str> = accounts.iter().map(|a| a.as_str()).collect();
        self.rows(
            &format!(
                "SELECT {RUNNER_COLS} FROM runners WHERE settled_until < cap_at \
                 AND settled_until < $1 AND account = ANY($2) ORDER BY runner_id"
            ),
            &[&before.0, &names],
        )?
        .iter()
        .map(|r| runner_row(r))
        .collect()
    }

    fn db(&mut self) -> Box<dyn crate::statements::Db + '_> {
        Box::new(super::reader::PgDb(self.tx))
    }

    fn prune_runner_events(&mut self, before: Timestamp, limit: usize) -> Result<usize> {
        // Rows another server's sweep is deleting are skipped rather than waited for: the
        // next page finds what is left.
        let n = self.exec(
            "DELETE FROM runner_events WHERE event_id IN (SELECT event_id FROM runner_events \
             WHERE received_at < $1 ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
            &[&before.0, &(limit as i64)],
        )?;
        Ok(n as usize)
    }

    fn live_runners(
        &mut self,
        accounts: &[AccountId],
        now: Timestamp,
    ) -> Result<Vec<RunnerRecord>> {
        if accounts.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = accounts.iter().map(|a| a.as_str()).collect();
        self.rows(
            &format!(
                "SELECT {RUNNER_COLS} FROM runners WHERE account = ANY($1) AND last_at > $2 \
                 AND cap_at > $3 AND state <> 'TERMINATED' ORDER BY account, runner_id"
            ),
            &[&names, &crate::rows::live_since(now), &now.0],
        )?
        .iter()
        .map(|r| runner_row(r))
        .collect()
    }

    fn load_payments(&mut self, keys: &crate::PaymentKeys, state: &mut BatchState) -> Result<()> {
        super::payments::load(self, keys, state)
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
        self.rows(
            "SELECT username FROM accounts WHERE period_charges > 0 AND username > $1 \
             AND period_start < $2 ORDER BY username LIMIT $3",
            &[
                &after.map_or("", |a| a.as_str()),
                &started_before.map_or(i64::MAX, |t| t.0),
                &(limit as i64),
            ],
        )?
        .iter()
        .map(|r| parse_id(AccountId::parse, r.try_get(0)?))
        .collect()
    }

    fn change_invoice_status(
        &mut self,
        year: i64,
        seq: i64,
        to: InvoiceStatus,
        at: Timestamp,
        reference: &str,
    ) -> Result<Option<InvoiceStatus>> {
        // The update waits for a concurrent change of the row and then checks its status again.
        let n = self.exec(
            "UPDATE invoices SET status = $3, status_changed_at = $4, status_reference = $5 \
             WHERE year = $1 AND seq = $2 AND status = 'open'",
            &[&year, &seq, &to.as_str(), &at.0, &reference],
        )?;
        if n == 1 {
            return Ok(None);
        }
        let rows = self.rows(
            "SELECT status, status_reference FROM invoices WHERE year = $1 AND seq = $2",
            &[&year, &seq],
        )?;
        let Some(row) = rows.first() else {
            return Err(StoreError::NotFound(format!(
                "invoice {}",
                crate::InvoiceRecord::id_of(year, seq)
            )));
        };
        let (status, was): (String, Option<String>) = (row.try_get(0)?, row.try_get(1)?);
        crate::rows::status_change_refused(&status, was.as_deref(), to, reference)
    }

    fn due_expiries(&mut self, now: Timestamp, limit: usize) -> Result<Vec<RequestId>> {
        self.rows(
            "SELECT request_id FROM requests WHERE hold_expires_at IS NOT NULL \
             AND hold_expires_at <= $1 ORDER BY hold_expires_at LIMIT $2",
            &[&now.0, &(limit as i64)],
        )?
        .iter()
        .map(|r| parse_id(RequestId::parse, r.try_get(0)?))
        .collect()
    }

    fn due_credit_expiries(&mut self, now: Timestamp, limit: usize) -> Result<Vec<AccountId>> {
        // As in the SQLite store: accounts whose due credits are all reserved by holds are
        // left out unless one of those holds expires in the same sweep.
        self.rows(
            "SELECT DISTINCT p.account FROM purchases p JOIN accounts a ON a.username = p.account \
             WHERE p.remaining_nanos > 0 AND p.expires_at IS NOT NULL AND p.expires_at <= $1 \
             AND (a.balance_nanos > a.held_nanos OR EXISTS (SELECT 1 FROM requests r \
               WHERE r.hold_expires_at IS NOT NULL AND r.hold_expires_at <= $1 \
               AND r.account = p.account)) LIMIT $2",
            &[&now.0, &(limit as i64)],
        )?
        .iter()
        .map(|r| parse_id(AccountId::parse, r.try_get(0)?))
        .collect()
    }

    fn due_expiry_notices(
        &mut self,
        now: Timestamp,
        horizon: Timestamp,
        limit: usize,
    ) -> Result<Vec<AccountId>> {
        self.rows(
            "SELECT DISTINCT account FROM purchases \
             WHERE remaining_nanos > 0 AND expires_at IS NOT NULL AND NOT expiry_noticed \
             AND expires_at > $1 AND expires_at <= $2 LIMIT $3",
            &[&now.0, &horizon.0, &(limit as i64)],
        )?
        .iter()
        .map(|r| parse_id(AccountId::parse, r.try_get(0)?))
        .collect()
    }

    fn create_account(
        &mut self,
        username: &AccountId,
        billing: BillingMode,
        now: Timestamp,
    ) -> Result<()> {
        let n = self.exec(
            "INSERT INTO accounts (username, created_at, terms) VALUES ($1, $2, $3) \
             ON CONFLICT (username) DO NOTHING",
            &[
                &username.as_str(),
                &now.0,
                &terms_text(&TermsSchedule::first(billing)),
            ],
        )?;
        if n == 0 {
            return Err(StoreError::AlreadyExists(format!("account {username}")));
        }
        Ok(())
    }

    fn set_account_terms(&mut self, username: &AccountId, terms: &TermsSchedule) -> Result<()> {
        let n = self.exec(
            "UPDATE accounts SET terms = $2 WHERE username = $1",
            &[&username.as_str(), &terms_text(terms)],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("account {username}")));
        }
        Ok(())
    }

    fn set_account_limits(&mut self, username: &AccountId, limits: &[LimitState]) -> Result<()> {
        let n = self.exec(
            "UPDATE accounts SET limits = $2 WHERE username = $1",
            &[&username.as_str(), &limits_text(limits)],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("account {username}")));
        }
        Ok(())
    }

    fn api_key(&mut self, key_id: &ApiKeyId) -> Result<Option<ApiKeyRecord>> {
        self.rows(
            &format!("SELECT {KEY_COLS} FROM api_keys WHERE key_id = $1"),
            &[&key_id.as_str()],
        )?
        .first()
        .map(super::load::key_row)
        .transpose()
    }

    fn running_holds(&mut self, account: &AccountId, key: Option<&ApiKeyId>) -> Result<Nanos> {
        let rows = self.rows(
            "SELECT COALESCE(SUM(hold_nanos), 0)::bigint FROM requests \
             WHERE account = $1 AND status = 'IN_PROGRESS' \
             AND ($2::text IS NULL OR api_key = $2::text)",
            &[&account.as_str(), &key.map(|k| k.as_str())],
        )?;
        Ok(Nanos(rows[0].try_get(0)?))
    }

    fn charged_since(
        &mut self,
        account: &AccountId,
        key: Option<&ApiKeyId>,
        since: Timestamp,
    ) -> Result<Nanos> {
        let rows = self.rows(
            "SELECT COALESCE(SUM(total_nanos), 0)::bigint FROM line_items \
             WHERE account = $1 AND billed_at >= $2 \
             AND ($3::text IS NULL OR api_key = $3::text)",
            &[&account.as_str(), &since.0, &key.map(|k| k.as_str())],
        )?;
        Ok(Nanos(rows[0].try_get(0)?))
    }

    fn insert_portal_link(&mut self, link: &PortalLink) -> Result<()> {
        let n = self.exec(
            "INSERT INTO portal_links (token_sha256, account, created_at, expires_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (token_sha256) DO NOTHING",
            &[
                &link.token_sha256,
                &link.account.as_str(),
                &link.created_at.0,
                &link.expires_at.0,
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
        self.rows(
            "UPDATE portal_links SET used_at = $2 \
             WHERE token_sha256 = $1 AND used_at IS NULL AND expires_at > $2 \
             RETURNING account",
            &[&token_sha256, &now.0],
        )?
        .first()
        .map(|r| crate::parse_id(AccountId::parse, &r.get::<_, String>(0)))
        .transpose()
    }

    fn insert_web_session(&mut self, w: &WebSession) -> Result<()> {
        self.exec(
            &format!(
                "INSERT INTO web_sessions ({WEB_SESSION_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            ),
            &[
                &w.id_sha256,
                &w.account.as_ref().map(|a| a.as_str()),
                &w.key_id.as_ref().map(|k| k.as_str()),
                &w.csrf,
                &w.created_at.0,
                &w.expires_at.0,
                &w.ended_at.map(|t| t.0),
            ],
        )?;
        Ok(())
    }

    fn end_web_session(&mut self, id_sha256: &str, now: Timestamp) -> Result<bool> {
        let n = self.exec(
            "UPDATE web_sessions SET ended_at = $2 WHERE id_sha256 = $1 AND ended_at IS NULL",
            &[&id_sha256, &now.0],
        )?;
        Ok(n > 0)
    }

    fn ensure_provider_webhook(&mut self, now: Timestamp) -> Result<bool> {
        webhooks::ensure_provider(self, now)
    }

    fn insert_setting_if_absent(&mut self, key: &str, value: &str) -> Result<String> {
        // A server inserting at once waits for this one's row and inserts nothing; the value
        // read is the one committed first.
        self.exec(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[&key, &value],
        )?;
        setting(self, key)?
            .ok_or_else(|| StoreError::Corrupt(format!("setting {key} was not written")))
    }

    fn insert_webhook(&mut self, hook: &WebhookRecord) -> Result<()> {
        webhooks::insert_webhook(self, hook)
    }

    fn delete_webhook(&mut self, webhook_id: &str, now: Timestamp) -> Result<bool> {
        webhooks::delete_webhook(self, webhook_id, now)
    }

    fn claim_deliveries(
        &mut self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
        per_webhook: usize,
    ) -> Result<Vec<ClaimedDelivery>> {
        webhooks::claim(self, now, lease_until, limit, per_webhook)
    }

    fn record_deliveries(&mut self, results: &[DeliveryResult]) -> Result<usize> {
        webhooks::record(self, results)
    }

    fn redeliver(&mut self, webhook_id: &str, event_seq: i64, now: Timestamp) -> Result<bool> {
        webhooks::redeliver(self, webhook_id, event_seq, now)
    }

    fn end_account_sessions(&mut self, account: &AccountId, now: Timestamp) -> Result<usize> {
        let n = self.exec(
            "UPDATE web_sessions SET ended_at = $2 WHERE account = $1 AND ended_at IS NULL",
            &[&account.as_str(), &now.0],
        )?;
        usize::try_from(n)
            .map_err(|_| StoreError::Corrupt(format!("{n} sessions ended: out of range")))
    }

    fn insert_api_key(&mut self, k: &ApiKeyRecord) -> Result<bool> {
        let n = self.exec(
            &format!(
                "INSERT INTO api_keys ({KEY_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (key_id) DO NOTHING"
            ),
            &[
                &k.key_id.as_str(),
                &k.account.as_ref().map(|a| a.as_str()),
                &k.scope.as_str(),
                &k.alias,
                &k.secret_sha256,
                &k.created_at.0,
                &k.revoked_at.map(|t| t.0),
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
        let n = self.exec(
            "UPDATE api_keys SET revoked_at = $3 WHERE key_id = $1 \
             AND account IS NOT DISTINCT FROM $2 AND revoked_at IS NULL",
            &[&key_id.as_str(), &account.map(|a| a.as_str()), &now.0],
        )?;
        Ok(n > 0)
    }

    fn upsert_endpoint(&mut self, def: &EndpointDef, now: Timestamp) -> Result<()> {
        self.exec(
            "INSERT INTO endpoints (endpoint_id, def, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (endpoint_id) DO UPDATE SET def = excluded.def, \
             updated_at = excluded.updated_at",
            &[&def.id.as_str(), &to_json(def), &now.0],
        )?;
        bump_catalog_generation(self)
    }

    fn insert_price_version(
        &mut self,
        endpoint: &EndpointId,
        account: Option<&AccountId>,
        effective_from: Timestamp,
        rule: &PriceRule,
        now: Timestamp,
    ) -> Result<i64> {
        let rows = self.rows(
            "INSERT INTO price_versions (endpoint_id, account, effective_from, rule, created_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[
                &endpoint.as_str(),
                &account.map(|a| a.as_str()),
                &effective_from.0,
                &to_json(rule),
                &now.0,
            ],
        )?;
        let id: i64 = rows
            .first()
            .ok_or_else(|| StoreError::Database(DbError::msg("no price version id returned")))?
            .try_get(0)?;
        bump_catalog_generation(self)?;
        Ok(id)
    }

    fn set_setting(&mut self, key: &str, value: &str) -> Result<()> {
        self.exec(
            "INSERT INTO settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&key, &value],
        )?;
        bump_catalog_generation(self)
    }

    fn load_catalog(&mut self) -> Result<Catalog> {
        load_catalog(self)
    }
}
