//! Test helpers shared by sluice's crates, so every backend is held to one definition of correct.
//!
//! - [`conformance`]: the store conformance suite. A backend runs it with one line,
//!   [`store_conformance!`], and gets one test per case.
//! - `tests/tidy.rs` (in this crate): the project's rules, checked by plain tests.

pub mod conformance;
mod rng;

pub use rng::Rng;
