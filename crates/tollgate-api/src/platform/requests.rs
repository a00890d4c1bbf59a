//! `GET /v1/models/requests/by-endpoint` (API scope): an account's request history, request by
//! request, in fal's shape. Assembled by `tollgate-query` from the requests table.

use super::paging;
use crate::error::ApiError;
use crate::extract::{Api, Customer, FromQuery, Params};
use crate::openapi::{tags, CustomerErrors};
use crate::query_string::{Query, MAX_IDS};
use crate::wire::{Number, Time};
use crate::AppState;
use axum::extract::State;
use rust_decimal::Decimal;
use serde::Serialize;
use tollgate_core::ids::{EndpointId, RequestId};
use tollgate_query::requests::{
    history_range, RequestHistoryQuery, RequestOrder, RequestOutcome, RequestSummary,
};
use tollgate_query::timeframe::Moment;
use tollgate_query::Cursor;
use utoipa::{IntoParams, ToSchema};

/// Requests per page by default, and at most (fal's).
const HISTORY_LIMIT: (usize, usize) = (50, 100);

/// How a request ended.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum RequestStatusFilter {
    /// Completed with a status below 400.
    Success,
    /// Failed with a 5xx, or expired without completing.
    Error,
    /// Failed with a 4xx.
    UserError,
}

/// The order of the requests, latest or longest first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum RequestSort {
    EndedAt,
    Duration,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RequestHistoryParams {
    /// Requests per page: default 50, at most 100.
    #[param(value_type = Option<usize>, minimum = 1, maximum = 100)]
    limit: usize,
    /// Pagination cursor from a previous response (its `next_cursor`, unchanged).
    #[param(value_type = Option<String>, min_length = 1)]
    cursor: Option<Cursor>,
    /// 1-50 endpoint ids, repeated or comma-separated.
    #[param(value_type = Vec<EndpointId>, style = Form, explode, min_items = 1, max_items = 50)]
    endpoint_id: Vec<EndpointId>,
    /// Start of the range of end times, an exact instant: an RFC 3339 date-time with offset, or
    /// a date (midnight UTC). Default: a day before `end` (90 days when `request_id` is given).
    /// The range may span at most 90 days.
    #[param(value_type = Option<String>, example = "2025-01-01T00:00:00Z")]
    start: Option<Moment>,
    /// End, exclusive; as `start`. Default: now.
    #[param(value_type = Option<String>, example = "2025-01-02T00:00:00Z")]
    end: Option<Moment>,
    /// Only requests that ended so.
    #[param(value_type = Option<RequestStatusFilter>)]
    status: Option<RequestOutcome>,
    /// Only this request.
    #[param(value_type = Option<RequestId>)]
    request_id: Option<RequestId>,
    /// Payloads are not stored: `expand=payloads` (or any other value) answers 400.
    #[param(value_type = Option<Vec<String>>, style = Form, explode)]
    #[allow(dead_code)]
    expand: (),
    /// `ended_at` (default: the latest end first) or `duration` (the longest first).
    #[param(value_type = Option<RequestSort>)]
    sort_by: RequestOrder,
}

impl FromQuery for RequestHistoryParams {
    fn from_query(q: &Query) -> Result<Self, ApiError> {
        if q.has("expand") {
            let values = q.list("expand", usize::MAX)?;
            return Err(if values.iter().any(|v| v == "payloads") {
                ApiError::invalid(
                    "expand",
                    "payloads are not stored, so expand=payloads is not available",
                )
            } else {
                ApiError::invalid(
                    "expand",
                    format!("unknown expand value '{}'", values.join(",")),
                )
            });
        }
        let endpoint_id = q.ids("endpoint_id", EndpointId::parse)?;
        if endpoint_id.is_empty() {
            return Err(ApiError::invalid(
                "endpoint_id",
                format!("endpoint_id is required: give 1-{MAX_IDS} endpoint ids"),
            ));
        }
        let moment = |name: &str| {
            q.one(name)?
                .map(|t| {
                    Moment::parse(t).map_err(|e| ApiError::invalid(name, format!("{name} {e}")))
                })
                .transpose()
        };
        let status = q
            .one("status")?
            .map(|s| match s {
                "success" => Ok(RequestOutcome::Success),
                "error" => Ok(RequestOutcome::Error),
                "user_error" => Ok(RequestOutcome::UserError),
                other => Err(ApiError::invalid(
                    "status",
                    format!("unknown status '{other}'; allowed: success, error, user_error"),
                )),
            })
            .transpose()?;
        let sort_by = match q.one("sort_by")? {
            None | Some("ended_at") => RequestOrder::EndedAt,
            Some("duration") => RequestOrder::Duration,
            Some(other) => {
                return Err(ApiError::invalid(
                    "sort_by",
                    format!("unknown sort_by '{other}'; allowed: ended_at, duration"),
                ))
            }
        };
        Ok(RequestHistoryParams {
            limit: q.limit(HISTORY_LIMIT.0, HISTORY_LIMIT.1)?,
            cursor: q.cursor()?,
            endpoint_id,
            start: moment("start")?,
            end: moment("end")?,
            status,
            request_id: q
                .one("request_id")?
                .map(|s| {
                    RequestId::parse(s).map_err(|e| {
                        ApiError::invalid("request_id", format!("request_id is not valid: {e}"))
                    })
                })
                .transpose()?,
            expand: (),
            sort_by,
        })
    }
}

/// One finished request. Payloads (`json_input`, `json_output`) are not stored.
#[derive(Serialize, ToSchema)]
pub struct RequestItem {
    request_id: RequestId,
    endpoint_id: EndpointId,
    /// When it started running (when it was submitted, if it never started).
    started_at: Time,
    /// When it was submitted (for usage reported after the fact, when it happened).
    sent_at: Time,
    ended_at: Time,
    /// The status it completed with; null when it was cancelled or expired.
    status_code: Option<u16>,
    /// Seconds from `sent_at` to `ended_at` (millisecond precision).
    duration: Number,
}

#[derive(Serialize, ToSchema)]
pub struct RequestHistory {
    /// Cursor for the next page, null if no more pages.
    next_cursor: Option<String>,
    has_more: bool,
    items: Vec<RequestItem>,
}

fn item(r: RequestSummary) -> RequestItem {
    RequestItem {
        request_id: r.request_id,
        endpoint_id: r.endpoint,
        started_at: Time(r.started_at),
        sent_at: Time(r.sent_at),
        ended_at: Time(r.ended_at),
        status_code: r.status_code,
        duration: Number(Decimal::new(r.duration_ms, 3)),
    }
}

/// List Requests by Endpoint
///
/// The account's finished requests (completed, failed, cancelled or expired) to 1-50
/// endpoints, one item per request: when it was sent, started and ended, its status code and
/// its duration. `start` and `end` bound the end time and are exact instants (a plain date is
/// midnight UTC); by default the last day (90 days when `request_id` is given), at most 90
/// days. `status`: `success` (completed), `user_error` (failed with a 4xx), `error` (failed
/// with a 5xx, or expired). Ordered by end time (`sort_by=ended_at`, the latest first) or by
/// duration (`sort_by=duration`, the longest first), then by request id, with an opaque keyset
/// cursor (`limit` default 50, at most 100). Payloads are not stored, so `expand=payloads`
/// answers 400. Needs a customer key (`API` or `ADMIN`) and shows only that key's account.
#[utoipa::path(
    get, path = "/v1/models/requests/by-endpoint", tag = tags::FAL,
    operation_id = "listRequestsByEndpoint",
    security(("Key" = ["API"])),
    params(RequestHistoryParams),
    responses(
        CustomerErrors,
        (status = 200, description = "The requests.", body = RequestHistory),
    )
)]
pub async fn by_endpoint(
    State(state): State<AppState>,
    who: Customer<Api>,
    Params(p): Params<RequestHistoryParams>,
) -> Result<axum::Json<RequestHistory>, ApiError> {
    let (from, to) = history_range(p.start, p.end, p.request_id.is_some(), state.engine.now())?;
    let q = RequestHistoryQuery {
        account: who.account,
        endpoints: p.endpoint_id,
        from,
        to,
        outcome: p.status,
        request_id: p.request_id,
        order: p.sort_by,
        cursor: p.cursor,
        limit: p.limit,
    };
    let page = tollgate_query::requests::request_history(&state.engine, q).await?;
    let (next_cursor, has_more) = paging(page.next_cursor);
    Ok(axum::Json(RequestHistory {
        next_cursor,
        has_more,
        items: page.items.into_iter().map(item).collect(),
    }))
}
