//! End-to-end tests: real `ward` processes on 127.0.0.1, one test binary for the whole tree.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod agent;
mod audit;
mod authz;
mod ca;
mod cli;
mod policy;
mod proxy;
mod support;
mod up;
