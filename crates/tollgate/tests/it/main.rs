//! The binary's integration tests, in one test binary (one link, one run), each driving the
//! real `tollgate` executable: the operator CLI, crash safety under SIGKILL, several servers on
//! one PostgreSQL database, the served OpenAPI document's validity, and schemathesis's
//! property-based run of the whole HTTP API against it. `common` is the harness they share.

mod cli;
mod cluster;
mod common;
mod crash;
mod metrics;
mod openapi;
mod schemathesis;
mod uploads;
