//! The binary's integration tests, in one test binary (one link, one run), each driving the
//! real `tollgate` executable: the operator CLI, crash safety under SIGKILL, and several
//! servers on one PostgreSQL database. `common` is the harness they share.

mod cli;
mod cluster;
mod common;
mod crash;
