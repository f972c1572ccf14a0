//! Test support for stores: the store contract suite every store must pass, and a small
//! aggregate to drive it (given / when / then for domain code is the `testkit` module).
//!
//! A store crate runs the whole suite with `store_contract_tests!`, given a
//! `contract::StoreFactory` that hands out empty stores. Each check returns a `Violation`
//! naming the broken rule (the generated tests turn it into a test failure). The suite is only
//! for tests, so it is compiled only with the `testing` feature: enable it in the store crate's
//! `[dev-dependencies]`.

#[cfg(feature = "testing")]
pub mod contract;
pub mod counter;
#[cfg(feature = "testing")]
mod violation;

#[cfg(feature = "testing")]
pub use violation::Violation;
