//! The aggregate test kit: given / when / then through the repository on the in-memory store,
//! and its failure messages, pinned line by line.

use std::panic::{catch_unwind, AssertUnwindSafe};

use async_trait::async_trait;
use eventsource_core::testing::counter::{Counter, CounterEvent, Increment, Incremented, TooHigh};
use eventsource_core::testkit::{AggregateTest, Then};
use eventsource_core::{Aggregate, CommandContext, DecodeError, DomainEvent, EncodeError};

fn inc(by: u32) -> CounterEvent {
    CounterEvent::Incremented(Incremented { by })
}

/// The message of the panic `check` raises (it must raise one).
fn panic_message(check: impl FnOnce()) -> String {
    let payload = catch_unwind(AssertUnwindSafe(check)).expect_err("the check should fail");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .expect("a text panic")
}

#[tokio::test]
async fn expected_events_pass_and_chain() {
    let then = AggregateTest::<Counter>::new()
        .given([inc(2), inc(3)])
        .when(Increment(4))
        .await;
    then.then_expect([inc(4)]).then_expect([inc(4)]);
    assert_eq!(then.events(), Some(&[inc(4)][..]));
    assert_eq!(then.state().map(|c| (c.value, c.events)), Some((9, 3)));
    // Stored after the given events, at version 3.
    assert_eq!(then.recorded().len(), 1);
    assert_eq!(then.recorded()[0].version.get(), 3);
    assert_eq!(
        then.stream_id().map(|s| s.to_string()).as_deref(),
        Some("counter-test")
    );
}

#[tokio::test]
async fn refusals_by_predicate_and_by_value() {
    let then = AggregateTest::<Counter>::new()
        .given([inc(999_999)])
        .when(Increment(2))
        .await;
    then.then_refuses(|e| matches!(e, TooHigh { .. }))
        .then_refuses_with(TooHigh { max: Counter::MAX });
    assert_eq!(then.error(), Some(&TooHigh { max: Counter::MAX }));
    assert!(then.recorded().is_empty(), "a refusal stores nothing");
    // The state after the given events alone.
    assert_eq!(then.state().map(|c| c.value), Some(999_999));
}

#[tokio::test]
async fn metadata_comes_from_the_context_and_the_instance_is_chosen() {
    let ctx = CommandContext::new()
        .with_actor("alice")
        .with_header("tenant", "acme");
    let then = AggregateTest::<Counter>::new()
        .for_instance("c-42")
        .with_context(ctx.clone())
        .when(Increment(1))
        .await;
    then.then_expect([inc(1)]);
    let recorded = &then.recorded()[0];
    assert_eq!(recorded.stream_id.to_string(), "counter-c-42");
    assert_eq!(recorded.metadata, ctx.metadata());
    assert_eq!(recorded.metadata.causation_id, Some(ctx.command_id));
}

#[test]
fn when_blocking_runs_in_a_plain_test() {
    AggregateTest::<Counter>::new()
        .given([inc(1)])
        .when_blocking(Increment(1))
        .then_expect([inc(1)]);
}

#[tokio::test]
async fn when_blocking_inside_a_runtime_says_to_await() {
    let then = AggregateTest::<Counter>::new().when_blocking(Increment(1));
    let message = panic_message(|| {
        then.then_expect([inc(1)]);
    });
    assert!(
        message.contains("use `.when(command).await` there"),
        "{message}"
    );
}

/// The message of a changed event: both lists one event per block, only the differing lines
/// marked, the first difference numbered.
#[tokio::test]
async fn a_changed_event_is_shown_line_by_line() {
    let then = AggregateTest::<Counter>::new()
        .given([inc(1)])
        .when(Increment(2))
        .await;
    let message = panic_message(|| {
        then.then_expect([inc(3)]);
    });
    assert_eq!(
        message,
        "\
then_expect: the command produced other events than expected
stream counter-test, given 1 event
expected 1 event, produced 1; first difference at event 1
(- expected, + produced)
  1  Incremented(
         Incremented {
-            by: 3,
+            by: 2,
         },
     )"
    );
}

/// A missing event: the common one unmarked, the missing one whole under `-`.
#[tokio::test]
async fn a_missing_event_is_marked_whole() {
    let then = AggregateTest::<Counter>::new().when(Increment(2)).await;
    let message = panic_message(|| {
        then.then_expect([inc(2), inc(5)]);
    });
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(
        lines,
        [
            "then_expect: the command produced other events than expected",
            "stream counter-test, given 0 events",
            "expected 2 events, produced 1; first difference at event 2",
            "(- expected, + produced)",
            "  1  Incremented(",
            "         Incremented {",
            "             by: 2,",
            "         },",
            "     )",
            "- 2  Incremented(",
            "-        Incremented {",
            "-            by: 5,",
            "-        },",
            "-    )",
        ]
    );
}

#[tokio::test]
#[should_panic(expected = "then_expect: expected 1 event, but the command was refused")]
async fn events_expected_but_refused_should_panic() {
    AggregateTest::<Counter>::new()
        .given([inc(1_000_000)])
        .when(Increment(1))
        .await
        .then_expect([inc(1)]);
}

#[tokio::test]
async fn events_expected_but_refused_names_the_refusal() {
    let then = AggregateTest::<Counter>::new()
        .given([inc(1_000_000)])
        .when(Increment(1))
        .await;
    let message = panic_message(|| {
        then.then_expect([inc(1)]);
    });
    assert_eq!(
        message,
        "\
then_expect: expected 1 event, but the command was refused
stream counter-test, given 1 event
refused with: the counter would pass 1000000
TooHigh {
    max: 1000000,
}
expected:
  1  Incremented(
         Incremented {
             by: 1,
         },
     )"
    );
}

#[tokio::test]
async fn refusal_expected_but_events_produced_lists_them() {
    let then = AggregateTest::<Counter>::new().when(Increment(7)).await;
    let message = panic_message(|| {
        then.then_refuses(|_| true);
    });
    assert_eq!(
        message,
        "\
then_refuses: expected a refusal, but the command produced 1 event
stream counter-test, given 0 events
produced:
  1  Incremented(
         Incremented {
             by: 7,
         },
     )"
    );
}

#[tokio::test]
async fn another_refusal_than_expected() {
    let then = AggregateTest::<Counter>::new()
        .given([inc(1_000_000)])
        .when(Increment(1))
        .await;
    let message = panic_message(|| {
        then.then_refuses_with(TooHigh { max: 5 });
    });
    assert_eq!(
        message,
        "\
then_refuses_with: the command was refused with another error than expected
stream counter-test, given 1 event
expected: the counter would pass 5
refused with: the counter would pass 1000000
(- expected, + refused with)
  1  TooHigh {
-        max: 5,
+        max: 1000000,
     }"
    );
    let message = panic_message(|| {
        then.then_refuses(|e| e.max == 5);
    });
    assert!(
        message.starts_with(
            "then_refuses: the command was refused, but not with the error expected\n"
        ),
        "{message}"
    );
}

#[tokio::test]
async fn an_invalid_instance_id_is_reported_as_not_run() {
    let then = AggregateTest::<Counter>::new()
        .for_instance("")
        .when(Increment(1))
        .await;
    assert!(then.failure().is_some());
    let message = panic_message(|| {
        then.then_expect([inc(1)]);
    });
    assert!(
        message.starts_with("then_expect: the command did not run\nno stream, given 0 events\ncould not make the stream id: the stream id is empty"),
        "{message}"
    );
}

// An aggregate whose event loses a field in its encoding (as a `#[serde(skip)]` would): the kit
// catches what a direct call of `handle` would not.

#[derive(Debug, Clone, PartialEq)]
enum NoteEvent {
    Written { text: String, draft: bool },
}

impl DomainEvent for NoteEvent {
    const EVENT_TYPES: &'static [&'static str] = &["NoteWritten"];

    fn event_type(&self) -> &'static str {
        "NoteWritten"
    }

    fn schema_version(&self) -> u32 {
        1
    }

    fn encode(&self) -> Result<serde_json::Value, EncodeError> {
        let Self::Written { text, .. } = self;
        Ok(serde_json::json!({ "text": text }))
    }

    fn decode(_: &str, _: u32, payload: &serde_json::Value) -> Result<Self, DecodeError> {
        Ok(Self::Written {
            text: payload["text"].as_str().unwrap_or_default().to_owned(),
            draft: false,
        })
    }
}

#[derive(Default)]
struct Note {
    written: u32,
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("the note is full")]
struct Full;

/// Services without a default: the words the note refuses.
struct Censor(Vec<&'static str>);

#[async_trait]
impl Aggregate for Note {
    const CATEGORY: &'static str = "note";
    type Event = NoteEvent;
    type Command = (String, bool);
    type Error = Full;
    type Services = Censor;

    fn apply(&mut self, _: &NoteEvent) {
        self.written += 1;
    }

    async fn handle(
        &self,
        (text, draft): &(String, bool),
        censor: &Censor,
    ) -> Result<Vec<NoteEvent>, Full> {
        if self.written >= 2 || censor.0.iter().any(|w| text.contains(w)) {
            return Err(Full);
        }
        Ok(vec![NoteEvent::Written {
            text: text.clone(),
            draft: *draft,
        }])
    }
}

#[tokio::test]
async fn services_are_passed_to_the_aggregate() {
    AggregateTest::<Note>::with_services(Censor(vec!["secret"]))
        .when(("a secret".into(), false))
        .await
        .then_refuses_with(Full);
    AggregateTest::<Note>::with_services(Censor(vec![]))
        .given([NoteEvent::Written {
            text: "a".into(),
            draft: false,
        }])
        .when(("b".into(), false))
        .await
        .then_expect([NoteEvent::Written {
            text: "b".into(),
            draft: false,
        }]);
}

#[tokio::test]
async fn events_that_do_not_read_back_unchanged_fail() {
    let then = AggregateTest::<Note>::with_services(Censor(vec![]))
        .when(("hi".into(), true))
        .await;
    let message = panic_message(|| {
        then.then_expect([NoteEvent::Written {
            text: "hi".into(),
            draft: true,
        }]);
    });
    assert_eq!(
        message,
        "\
then_expect: the produced events do not read back unchanged from the store (check their encoding)
stream note-test, given 0 events
(- produced, + read back)
  1  Written {
         text: \"hi\",
-        draft: true,
+        draft: false,
     }"
    );
}

/// A `Then` can be inspected in a `Debug` assertion message.
#[tokio::test]
async fn then_is_debug() {
    let then: Then<Counter> = AggregateTest::new().when(Increment(1)).await;
    let shown = format!("{then:?}");
    assert!(shown.contains("produced"), "{shown}");
}
