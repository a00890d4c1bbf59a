//! Gateway mode's queue (`gateway_requests`, API.md section 10): each gateway request's row
//! beside its `requests` row, written by the batches that change it, and the reads the
//! dispatcher and the caller's status calls make. The SQL is portable and both stores run it
//! through [`Db`], in the writer's db transaction or a read snapshot.
//!
//! The queue is an index of the rows waiting or running per endpoint in submission order
//! (`gateway_queue`, partial on those states): the dispatcher reads the next ones of an
//! endpoint, at most a few per account and the accounts taking turns, so one account's burst
//! never holds another's requests behind it. Reading takes no lock: the engine's
//! [`Op::Dispatch`](tollgate_core::machine::Op::Dispatch) decides under the account's lock
//! whether a request is still there to take, so two dispatchers reading the same rows start
//! each request once.

use crate::rows::Get;
use crate::statements::{Arg, Db};
use crate::{corrupt, parse_id, Result};
use std::collections::HashMap;
use std::sync::Arc;
use tollgate_core::gateway::{GatewayInput, GatewayRecord, GatewayResult, GatewayState, Lease};
use tollgate_core::ids::{AccountId, ApiKeyId, EndpointId, RequestId};
use tollgate_core::machine::BatchState;
use tollgate_core::Timestamp;

const COLS: &str = "request_id, account, endpoint_id, api_key, path, input, webhook, no_retry, \
     submitted_at, state, lease_owner, lease_until, dispatches, result_status, result_type, \
     result_body, result_error, finished_at";

fn record(r: &dyn Get) -> Result<GatewayRecord> {
    let state = r.text(9)?;
    let lease = match (r.opt_text(10)?, r.opt_int(11)?) {
        (Some(owner), Some(until)) => Some(Lease {
            owner: Arc::from(owner),
            until: Timestamp(until),
        }),
        _ => None,
    };
    let result = match r.opt_int(13)? {
        None => None,
        Some(status) => Some(GatewayResult {
            status_code: u16::try_from(status).map_err(|e| corrupt("result_status", e))?,
            content_type: r.opt_text(14)?,
            body: Arc::from(r.opt_bytes(15)?.unwrap_or_default()),
            error_type: r.opt_text(16)?,
        }),
    };
    Ok(GatewayRecord {
        request_id: parse_id(RequestId::parse, &r.text(0)?)?,
        account: parse_id(AccountId::parse, &r.text(1)?)?,
        endpoint: parse_id(EndpointId::parse, &r.text(2)?)?,
        api_key: r
            .opt_text(3)?
            .map(|k| parse_id(ApiKeyId::parse, &k))
            .transpose()?,
        input: GatewayInput {
            path: r.text(4)?,
            input: Arc::from(r.text(5)?),
            webhook: r.opt_text(6)?,
            no_retry: r.int(7)? != 0,
        },
        submitted_at: Timestamp(r.int(8)?),
        state: GatewayState::parse(&state).ok_or_else(|| corrupt("gateway state", &state))?,
        lease,
        dispatches: u32::try_from(r.int(12)?).map_err(|e| corrupt("dispatches", e))?,
        result,
        finished_at: r.opt_int(17)?.map(Timestamp),
    })
}

/// Loads the rows of `ids` that exist.
pub(crate) fn load(
    db: &mut dyn Db,
    ids: &[RequestId],
    out: &mut HashMap<RequestId, GatewayRecord>,
) -> Result<()> {
    for id in ids {
        let sql = format!(
            "SELECT {COLS} FROM gateway_requests WHERE request_id = {}",
            db.ph(1, "text")
        );
        db.each(&sql, &[Arg::Text(id.as_str().to_string())], &mut |r| {
            let g = record(r)?;
            out.insert(g.request_id.clone(), g);
            Ok(())
        })?;
    }
    Ok(())
}

/// Writes the batch's gateway rows: inserts the new ones, updates the others (their input
/// never changes).
pub(crate) fn persist(db: &mut dyn Db, state: &BatchState) -> Result<()> {
    for id in &state.dirty_gateway {
        let g = &state.gateway[id];
        let p = |i| db.ph(i, "bigint");
        let t = |i| db.ph(i, "text");
        let sql = format!(
            "INSERT INTO gateway_requests ({COLS}) VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {}, \
             {}, {}, {}, {}, {}, {}, {}, {}, {}) \
             ON CONFLICT (request_id) DO UPDATE SET state = excluded.state, \
             lease_owner = excluded.lease_owner, lease_until = excluded.lease_until, \
             dispatches = excluded.dispatches, result_status = excluded.result_status, \
             result_type = excluded.result_type, result_body = excluded.result_body, \
             result_error = excluded.result_error, finished_at = excluded.finished_at",
            t(1),
            t(2),
            t(3),
            t(4),
            t(5),
            t(6),
            t(7),
            p(8),
            p(9),
            t(10),
            t(11),
            p(12),
            p(13),
            p(14),
            t(15),
            db.ph(16, "bytea"),
            t(17),
            p(18)
        );
        let result = g.result.as_ref();
        let args = [
            Arg::Text(g.request_id.as_str().to_string()),
            Arg::Text(g.account.as_str().to_string()),
            Arg::Text(g.endpoint.as_str().to_string()),
            Arg::OptText(g.api_key.as_ref().map(|k| k.as_str().to_string())),
            Arg::Text(g.input.path.clone()),
            Arg::Text(g.input.input.to_string()),
            Arg::OptText(g.input.webhook.clone()),
            Arg::Int(i64::from(g.input.no_retry)),
            Arg::Int(g.submitted_at.0),
            Arg::Text(g.state.as_str().to_string()),
            Arg::OptText(g.lease.as_ref().map(|l| l.owner.to_string())),
            Arg::OptInt(g.lease.as_ref().map(|l| l.until.0)),
            Arg::Int(i64::from(g.dispatches)),
            Arg::OptInt(result.map(|r| i64::from(r.status_code))),
            Arg::OptText(result.and_then(|r| r.content_type.clone())),
            Arg::Bytes(result.map(|r| r.body.to_vec())),
            Arg::OptText(result.and_then(|r| r.error_type.clone())),
            Arg::OptInt(g.finished_at.map(|t| t.0)),
        ];
        db.each(&sql, &args, &mut |_| Ok(()))?;
    }
    Ok(())
}

/// Extends the leases `owner` holds on `ids` (requests still running) to `until`; returns the
/// requests it still holds.
pub(crate) fn renew(
    db: &mut dyn Db,
    owner: &str,
    ids: &[RequestId],
    until: Timestamp,
) -> Result<Vec<RequestId>> {
    let mut held = Vec::new();
    let sql = format!(
        "UPDATE gateway_requests SET lease_until = {} \
         WHERE request_id = {} AND lease_owner = {} AND state = 'running' RETURNING request_id",
        db.ph(1, "bigint"),
        db.ph(2, "text"),
        db.ph(3, "text")
    );
    for id in ids {
        let args = [
            Arg::Int(until.0),
            Arg::Text(id.as_str().to_string()),
            Arg::Text(owner.to_string()),
        ];
        db.each(&sql, &args, &mut |r| {
            held.push(parse_id(RequestId::parse, &r.text(0)?)?);
            Ok(())
        })?;
    }
    Ok(held)
}

/// Ends every lease at once: the store has one server (SQLite), so a lease left by a process
/// that stopped is nobody's, and its requests can be taken over without waiting it out.
pub(crate) fn end_leases(db: &mut dyn Db) -> Result<()> {
    db.each(
        "UPDATE gateway_requests SET lease_until = 0 WHERE state = 'running'",
        &[],
        &mut |_| Ok(()),
    )
}

/// Deletes up to `limit` rows of requests finished before `before` (their results are past
/// the retention), oldest first; then, within what is left of `limit`, rows whose units never
/// came and whose request expired before `before` (answered, never billed); returns how many.
pub(crate) fn prune(db: &mut dyn Db, before: Timestamp, limit: usize) -> Result<usize> {
    let done = format!(
        "DELETE FROM gateway_requests WHERE seq IN (SELECT seq FROM gateway_requests \
         WHERE state = 'done' AND finished_at < {} ORDER BY finished_at LIMIT {}) \
         RETURNING seq",
        db.ph(1, "bigint"),
        db.ph(2, "bigint")
    );
    let abandoned = format!(
        "DELETE FROM gateway_requests WHERE seq IN (SELECT g.seq FROM gateway_requests g \
         JOIN requests r ON r.request_id = g.request_id \
         WHERE g.state = 'awaiting_units' AND r.status = 'EXPIRED' AND r.finished_at < {} \
         ORDER BY g.seq LIMIT {}) RETURNING seq",
        db.ph(1, "bigint"),
        db.ph(2, "bigint")
    );
    let mut n = 0;
    for sql in [done, abandoned] {
        let left = limit.saturating_sub(n);
        if left == 0 {
            break;
        }
        db.each(
            &sql,
            &[Arg::Int(before.0), Arg::Int(left as i64)],
            &mut |_| {
                n += 1;
                Ok(())
            },
        )?;
    }
    Ok(n)
}

/// A request the dispatcher may take: queued, or running on a lease that ran out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub request_id: RequestId,
    pub account: AccountId,
}

/// The next requests of `endpoint` to dispatch at `now`: at most `per_account` of each
/// account's, oldest first, the accounts taking turns (every account's first, then every
/// account's second, ...), up to `limit`.
pub(crate) fn candidates(
    db: &mut dyn Db,
    endpoint: &EndpointId,
    now: Timestamp,
    per_account: usize,
    limit: usize,
) -> Result<Vec<Candidate>> {
    let sql = format!(
        "SELECT request_id, account FROM (\
           SELECT request_id, account, seq, \
                  row_number() OVER (PARTITION BY account ORDER BY seq) AS turn \
           FROM gateway_requests \
           WHERE endpoint_id = {e} AND state IN ('queued', 'running') \
             AND (state = 'queued' OR lease_until IS NULL OR lease_until <= {now})\
         ) AS q WHERE turn <= {per} ORDER BY turn, seq LIMIT {limit}",
        e = db.ph(1, "text"),
        now = db.ph(2, "bigint"),
        per = db.ph(3, "bigint"),
        limit = db.ph(4, "bigint"),
    );
    let mut out = Vec::new();
    db.each(
        &sql,
        &[
            Arg::Text(endpoint.as_str().to_string()),
            Arg::Int(now.0),
            Arg::Int(per_account as i64),
            Arg::Int(limit as i64),
        ],
        &mut |r| {
            out.push(Candidate {
                request_id: parse_id(RequestId::parse, &r.text(0)?)?,
                account: parse_id(AccountId::parse, &r.text(1)?)?,
            });
            Ok(())
        },
    )?;
    Ok(out)
}

/// A gateway request as its caller sees it: its row, and while it is queued, how many
/// requests of its endpoint are ahead of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayView {
    pub record: GatewayRecord,
    pub queue_position: Option<u64>,
}

/// The row of `id`, with its queue position while queued.
pub(crate) fn view(db: &mut dyn Db, id: &RequestId) -> Result<Option<GatewayView>> {
    let sql = format!(
        "SELECT {COLS}, seq FROM gateway_requests WHERE request_id = {}",
        db.ph(1, "text")
    );
    let mut found = None;
    db.each(&sql, &[Arg::Text(id.as_str().to_string())], &mut |r| {
        found = Some((record(r)?, r.int(18)?));
        Ok(())
    })?;
    let Some((record, seq)) = found else {
        return Ok(None);
    };
    let mut queue_position = None;
    if record.state == GatewayState::Queued {
        let sql = format!(
            "SELECT COUNT(*) FROM gateway_requests WHERE endpoint_id = {} \
             AND state IN ('queued', 'running') AND state = 'queued' AND seq < {}",
            db.ph(1, "text"),
            db.ph(2, "bigint")
        );
        db.each(
            &sql,
            &[
                Arg::Text(record.endpoint.as_str().to_string()),
                Arg::Int(seq),
            ],
            &mut |r| {
                queue_position = Some(u64::try_from(r.int(0)?).unwrap_or(0));
                Ok(())
            },
        )?;
    }
    Ok(Some(GatewayView {
        record,
        queue_position,
    }))
}
