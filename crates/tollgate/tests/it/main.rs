//! The binary's integration tests, in one test binary (one link, one run), each driving the
//! real `tollgate` executable: the operator CLI, crash safety under SIGKILL, several servers on
//! one PostgreSQL database, and schemathesis's property-based run of the whole HTTP API against
//! its OpenAPI document. `common` is the harness they share.

mod cli;
mod cluster;
mod common;
mod crash;
mod schemathesis;
