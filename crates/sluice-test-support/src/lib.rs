//! Test helpers shared by sluice's crates, so every backend is held to one definition of correct.
//!
//! - [`conformance`]: the store conformance suite. A backend runs it with one line,
//!   [`store_conformance!`], and gets one test per case.
//! - [`CountingAllocator`]: exact live-byte counts for memory budgets.
//! - [`RedisServer`], [`RedisCluster`]: real Redis processes on free loopback ports.
//! - [`CapturedLogs`]: what a test's code logged, to check what reaches the logs.
//! - `tests/tidy.rs` (in this crate): the project's rules, checked by plain tests.

mod alloc;
mod certs;
pub mod conformance;
mod logs;
mod redis;
mod rng;

pub use alloc::CountingAllocator;
pub use certs::{TestCert, tls_client};
pub use logs::CapturedLogs;
pub use redis::{RedisCluster, RedisServer};
pub use rng::Rng;
