//! The binary's integration tests, in one test binary (one link, one run), each driving the
//! real `tollgate` executable: the operator CLI, crash safety under SIGKILL, hostile clients
//! (slowloris, idle connects, slow uploads), several servers on one PostgreSQL database, gateway
//! mode's queue through a SIGKILL (one server on SQLite, two on PostgreSQL), the
//! served OpenAPI document's validity, schemathesis's property-based run of the whole HTTP API
//! against it, and running it in production (configuration, logs, safe start and stop,
//! backups, operator keys, logs without secrets). `common` is the harness they share.

mod cli;
mod cluster;
mod common;
mod crash;
mod dashboard;
mod gateway;
mod hostile;
mod keys;
mod logs;
mod metrics;
mod openapi;
mod ops;
mod schemathesis;
mod uploads;
mod webhooks;
