-- tollgate schema for PostgreSQL, version 16 (SQLite's version 20): gateway mode's queue. See
-- the SQLite file for what each column holds. Every row belongs to an account and is written
-- under its row lock, by the batch that changes its request.
CREATE TABLE gateway_requests (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id     TEXT COLLATE "C" NOT NULL UNIQUE,
    account        TEXT COLLATE "C" NOT NULL,
    endpoint_id    TEXT COLLATE "C" NOT NULL,
    api_key        TEXT COLLATE "C",
    path           TEXT    NOT NULL,
    input          TEXT    NOT NULL,
    webhook        TEXT,
    no_retry       BIGINT  NOT NULL,
    submitted_at   BIGINT  NOT NULL,
    state          TEXT    NOT NULL,
    lease_owner    TEXT,
    lease_until    BIGINT,
    dispatches     BIGINT  NOT NULL,
    result_status  BIGINT,
    result_type    TEXT,
    result_body    BYTEA,
    result_error   TEXT,
    finished_at    BIGINT
);
CREATE INDEX gateway_queue ON gateway_requests (endpoint_id, seq)
    WHERE state IN ('queued', 'running');
CREATE INDEX gateway_finished ON gateway_requests (finished_at) WHERE state = 'done';
CREATE INDEX gateway_awaiting ON gateway_requests (seq) WHERE state = 'awaiting_units';

-- The row that posts completed gateway requests to their `fal_webhook` URLs (see SQLite's).
INSERT INTO webhooks (webhook_id, url, events, description, secret, created_at, deleted_at, kind)
    VALUES ('wh_fal_webhooks', '', '["request.completed"]', NULL, '', 0, NULL, 'fal');
INSERT INTO webhook_event_types (event_type, webhook_id)
    VALUES ('request.completed', 'wh_fal_webhooks');
