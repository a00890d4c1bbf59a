//! An account's request history, request by request (fal's `GET /models/requests/by-endpoint`):
//! its finished requests to some endpoints, with when each was sent, started and ended, its
//! status code and duration. Payloads are never stored, so they are never shown.
//!
//! Each endpoint's page is one range of the store's `requests_by_endpoint` index, read after
//! the cursor and at most a page plus one long; the pages of the endpoints asked for (at most
//! 50) are merged into one, so a read is bounded by the page size, never by the history's.

use crate::cursor::{Cursor, Page};
use crate::timeframe::{self, Moment, RangeError};
use crate::QueryError;
use tollgate_core::ids::{AccountId, EndpointId, RequestId};
use tollgate_core::machine::RequestRecord;
use tollgate_core::Timestamp;
use tollgate_engine::Engine;
pub use tollgate_store::{RequestOrder, RequestOutcome};

/// The longest range one request-history query may span.
pub const HISTORY_MAX_RANGE_MS: i64 = 90 * 24 * 3_600_000;
/// The range when `start` is absent: the last day, or the longest range when a request id is
/// given (fal's defaults).
const HISTORY_DEFAULT_RANGE_MS: i64 = 24 * 3_600_000;

/// A request-history read: one account's requests to `endpoints` that ended in `[from, to)`.
#[derive(Clone, Debug)]
pub struct RequestHistoryQuery {
    pub account: AccountId,
    /// 1 to 50 endpoints.
    pub endpoints: Vec<EndpointId>,
    pub from: Timestamp,
    pub to: Timestamp,
    pub outcome: Option<RequestOutcome>,
    pub request_id: Option<RequestId>,
    pub order: RequestOrder,
    pub cursor: Option<Cursor>,
    pub limit: usize,
}

/// One finished request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestSummary {
    pub request_id: RequestId,
    pub endpoint: EndpointId,
    /// When it was submitted (or, for usage reported after the fact, when it happened).
    pub sent_at: Timestamp,
    /// When it started running; its submission when it never started.
    pub started_at: Timestamp,
    pub ended_at: Timestamp,
    /// The status it completed with; none when it was cancelled or expired.
    pub status_code: Option<u16>,
    /// From submission to end, in milliseconds.
    pub duration_ms: i64,
}

impl RequestSummary {
    fn of(r: RequestRecord) -> Option<RequestSummary> {
        let ended_at = r.finished_at?;
        Some(RequestSummary {
            started_at: r.started_at.unwrap_or(r.submitted_at),
            duration_ms: ended_at.0 - r.submitted_at.0,
            sent_at: r.submitted_at,
            ended_at,
            status_code: r.completion.map(|c| c.status_code),
            request_id: r.id,
            endpoint: r.endpoint,
        })
    }

    /// Its position in `order` (descending, then by request id descending).
    fn key(&self, order: RequestOrder) -> (i64, RequestId) {
        let k = match order {
            RequestOrder::EndedAt => self.ended_at.0,
            RequestOrder::Duration => self.duration_ms,
        };
        (k, self.request_id.clone())
    }
}

/// The request history's range: exact instants (a date means midnight UTC), `end` default now,
/// `start` default a day before `end` (90 days when a request id is given), at most
/// [`HISTORY_MAX_RANGE_MS`] long.
pub fn history_range(
    start: Option<Moment>,
    end: Option<Moment>,
    by_request_id: bool,
    now: Timestamp,
) -> Result<(Timestamp, Timestamp), RangeError> {
    let default = if by_request_id {
        HISTORY_MAX_RANGE_MS
    } else {
        HISTORY_DEFAULT_RANGE_MS
    };
    timeframe::instant_range(start, end, now, default, HISTORY_MAX_RANGE_MS)
}

/// fal's `GET /models/requests/by-endpoint`: a page of the account's finished requests to the
/// endpoints, latest end (or longest duration) first.
pub async fn request_history(
    engine: &Engine,
    q: RequestHistoryQuery,
) -> Result<Page<RequestSummary>, QueryError> {
    let after: Option<(i64, RequestId)> = Cursor::key(q.cursor.as_ref())?;
    let order = q.order;
    let per_endpoint: Vec<tollgate_store::RequestHistoryQuery> = q
        .endpoints
        .iter()
        .map(|e| tollgate_store::RequestHistoryQuery {
            account: q.account.clone(),
            endpoint: e.clone(),
            from: q.from,
            to: q.to,
            outcome: q.outcome,
            request_id: q.request_id.clone(),
            order,
            after: after.clone(),
            limit: q.limit.saturating_add(1),
        })
        .collect();
    let records = engine
        .read(move |r| {
            let mut all = Vec::new();
            for eq in &per_endpoint {
                all.extend(r.request_history(eq)?);
            }
            Ok(all)
        })
        .await?;
    let mut items: Vec<RequestSummary> =
        records.into_iter().filter_map(RequestSummary::of).collect();
    items.sort_by_key(|s| std::cmp::Reverse(s.key(order)));
    Ok(Page::of(items, q.limit, |s| s.key(order)))
}
