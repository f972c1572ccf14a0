//! A failing check points at the test's own line (`#[track_caller]`), like `assert_eq!`. Its
//! own test binary: it sets the process's panic hook.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use eventsource_core::testing::counter::{Counter, Increment};
use eventsource_core::testkit::AggregateTest;

#[test]
fn the_panic_points_at_the_test() {
    let then = AggregateTest::<Counter>::new().when_blocking(Increment(1));
    let location = Arc::new(Mutex::new(None));
    let seen = Arc::clone(&location);
    std::panic::set_hook(Box::new(move |info| {
        *seen.lock().unwrap() = info.location().map(|l| (l.file().to_owned(), l.line()));
    }));
    let line = line!() + 1;
    let failed = catch_unwind(AssertUnwindSafe(|| then.then_expect([])));
    let _ = std::panic::take_hook();
    assert!(failed.is_err());
    let location = location.lock().unwrap().clone();
    assert_eq!(location, Some((file!().to_owned(), line)));
}
