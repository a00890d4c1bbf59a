-- tollgate schema for PostgreSQL, version 4 (SQLite's version 8): an account's finished
-- requests to one endpoint are read in end time order (the request history, fal's
-- `GET /models/requests/by-endpoint`) from a range of this index, not a scan of the requests
-- table.
CREATE INDEX requests_by_endpoint ON requests (account, endpoint_id, finished_at, request_id)
    WHERE finished_at IS NOT NULL;
