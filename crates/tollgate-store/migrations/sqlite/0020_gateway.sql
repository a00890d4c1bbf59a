-- tollgate schema version 20: gateway mode's queue (API.md section 10). A gateway request is a
-- `requests` row of source `gateway` (its money: hold, settlement, line item) with this row
-- beside it, written by the same batches: what the caller submitted, where it is in the
-- gateway's hands and the model server's answer.
CREATE TABLE gateway_requests (
    -- Submission order: the queue's order within an endpoint and an account.
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id     TEXT    NOT NULL UNIQUE,
    account        TEXT    NOT NULL,
    endpoint_id    TEXT    NOT NULL,
    api_key        TEXT,
    -- The path below the endpoint ('' or '/...'), the JSON input, `fal_webhook`, `x-fal-no-retry`.
    path           TEXT    NOT NULL,
    input          TEXT    NOT NULL,
    webhook        TEXT,
    no_retry       INTEGER NOT NULL,
    submitted_at   INTEGER NOT NULL,
    -- queued | running | awaiting_units | done
    state          TEXT    NOT NULL,
    -- The dispatcher calling a model server for it, and until when (renewed while it calls).
    lease_owner    TEXT,
    lease_until    INTEGER,
    dispatches     INTEGER NOT NULL,
    -- The answer: its status, media type, body, and tollgate's reason when tollgate ended it.
    result_status  INTEGER,
    result_type    TEXT,
    result_body    BLOB,
    result_error   TEXT,
    finished_at    INTEGER
);
-- The queue: the requests waiting or running on an endpoint, in submission order.
CREATE INDEX gateway_queue ON gateway_requests (endpoint_id, seq)
    WHERE state IN ('queued', 'running');
-- Finished requests by age: their results are deleted after the retention.
CREATE INDEX gateway_finished ON gateway_requests (finished_at) WHERE state = 'done';
-- Answered requests awaiting their units: those whose request expired are deleted after the
-- retention too.
CREATE INDEX gateway_awaiting ON gateway_requests (seq) WHERE state = 'awaiting_units';

-- The row that posts completed gateway requests to their callers' `fal_webhook` URLs: the
-- outbox's `request.completed` events (one per request that gave a URL; an internal type, not
-- sent to `*` subscriptions) are delivered through it, with the outbox's leases and retries.
-- It is not the operator's (kind `fal`): never listed, read, deleted or redelivered to by
-- them; the URL of each delivery is its event's.
INSERT INTO webhooks (webhook_id, url, events, description, secret, created_at, deleted_at, kind)
    VALUES ('wh_fal_webhooks', '', '["request.completed"]', NULL, '', 0, NULL, 'fal');
INSERT INTO webhook_event_types (event_type, webhook_id)
    VALUES ('request.completed', 'wh_fal_webhooks');
