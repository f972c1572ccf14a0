//! Given/when/then test kits that need no database: drive a component's pure decisions and
//! compare the outcome with what a test expects, printing a readable diff when they differ.
//!
//! - [`ProcessManagerHarness`]: given events (and elapsed time), then expect commands, deadlines
//!   and completion.

mod diff;
mod process_manager;

#[doc(inline)]
pub use diff::line_diff;
#[doc(inline)]
pub use process_manager::{envelope, Mismatch, ProcessManagerHarness};
