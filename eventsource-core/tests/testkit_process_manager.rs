//! The process manager harness: given events and elapsed time, then commands, deadlines,
//! completion and state; and its failure message.

use std::time::Duration;

use async_trait::async_trait;
use eventsource_core::process_manager::{CommandFailure, Decision, ProcessManager, Trigger};
use eventsource_core::testkit::{envelope, ProcessManagerHarness};
use eventsource_core::{CommandContext, DecodeError, DomainEvent, EncodeError, Envelope, StreamId};

/// A booking's events.
#[derive(Debug, Clone, PartialEq)]
enum Booking {
    Requested,
    Confirmed,
}

impl DomainEvent for Booking {
    const EVENT_TYPES: &'static [&'static str] = &["BookingRequested", "BookingConfirmed"];
    fn event_type(&self) -> &'static str {
        match self {
            Self::Requested => "BookingRequested",
            Self::Confirmed => "BookingConfirmed",
        }
    }
    fn schema_version(&self) -> u32 {
        1
    }
    fn encode(&self) -> Result<serde_json::Value, EncodeError> {
        Ok(serde_json::json!({}))
    }
    fn decode(t: &str, _: u32, _: &serde_json::Value) -> Result<Self, DecodeError> {
        Ok(if t == "BookingRequested" {
            Self::Requested
        } else {
            Self::Confirmed
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Command {
    HoldRoom(String),
    ChargeDeposit(String),
    ReleaseRoom(String),
    Notify(String),
}

/// Holds a room and charges a deposit on request; releases the room when the deposit is
/// refused or no confirmation comes within an hour.
struct Bookings;

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct State {
    booking: String,
    held: bool,
}

#[async_trait]
impl ProcessManager for Bookings {
    type Event = Envelope<Booking>;
    type State = State;
    type Command = Command;

    fn name(&self) -> &str {
        "bookings"
    }

    fn instance_of(&self, event: &Envelope<Booking>) -> Option<String> {
        Some(event.stream_id.id().to_owned())
    }

    fn decide(
        &self,
        state: &mut State,
        trigger: Trigger<'_, Envelope<Booking>, Command>,
    ) -> Decision<Command> {
        match trigger {
            Trigger::Event(e) => match e.event {
                Booking::Requested => {
                    state.booking = e.stream_id.id().to_owned();
                    state.held = true;
                    Decision::new()
                        .command(Command::HoldRoom(state.booking.clone()))
                        .command(Command::ChargeDeposit(state.booking.clone()))
                        .set_deadline("confirmation", Duration::from_secs(3600))
                }
                Booking::Confirmed => Decision::new().cancel_deadline("confirmation").complete(),
            },
            Trigger::Deadline { .. }
            | Trigger::Refused {
                command: Command::ChargeDeposit(_),
                ..
            } => {
                state.held = false;
                Decision::new()
                    .command(Command::ReleaseRoom(state.booking.clone()))
                    .complete()
            }
            Trigger::Refused { command, reason } => {
                Decision::new().command(Command::Notify(format!("{command:?}: {reason}")))
            }
        }
    }

    async fn execute(&self, _: &Command, _: &CommandContext) -> Result<(), CommandFailure> {
        Ok(())
    }
}

fn booking(id: &str, version: u64, event: Booking) -> Envelope<Booking> {
    envelope(
        StreamId::new("booking", id).expect("a valid id"),
        version,
        event,
    )
}

#[test]
fn the_happy_path_issues_its_commands_and_cancels_its_deadline() {
    ProcessManagerHarness::new(Bookings)
        .given([booking("b-1", 1, Booking::Requested)])
        .then_commands([
            Command::HoldRoom("b-1".into()),
            Command::ChargeDeposit("b-1".into()),
        ])
        .then_deadlines([("b-1", "confirmation", Duration::from_secs(3600))])
        .when_time_passes(Duration::from_secs(1800))
        .then_no_commands()
        .then_deadlines([("b-1", "confirmation", Duration::from_secs(1800))])
        .when(booking("b-1", 2, Booking::Confirmed))
        .then_no_commands()
        .then_no_deadlines()
        .then_completed("b-1");
}

#[test]
fn a_deadline_fires_once_when_its_time_has_passed() {
    ProcessManagerHarness::new(Bookings)
        .given([booking("b-1", 1, Booking::Requested)])
        .when_time_passes(Duration::from_secs(3599))
        .then_no_commands()
        .when_time_passes(Duration::from_secs(1))
        .then_commands([Command::ReleaseRoom("b-1".into())])
        .then_completed("b-1")
        .then_state(
            "b-1",
            &State {
                booking: "b-1".into(),
                held: false,
            },
        )
        .when_time_passes(Duration::from_secs(7200))
        .then_no_commands();
}

#[test]
fn a_refused_command_is_decided_on_and_the_rest_of_its_decision_dropped() {
    ProcessManagerHarness::new(Bookings)
        .refusing(|command| {
            matches!(command, Command::ChargeDeposit(_)).then(|| "card expired".to_owned())
        })
        .given([booking("b-1", 1, Booking::Requested)])
        .then_commands([
            Command::HoldRoom("b-1".into()),
            Command::ChargeDeposit("b-1".into()),
            Command::ReleaseRoom("b-1".into()),
        ])
        .then_no_deadlines()
        .then_completed("b-1");
}

#[test]
fn instances_are_apart_and_a_complete_one_ignores_later_events() {
    ProcessManagerHarness::new(Bookings)
        .given([
            booking("b-1", 1, Booking::Requested),
            booking("b-2", 1, Booking::Requested),
            booking("b-1", 2, Booking::Confirmed),
        ])
        .then_deadlines([("b-2", "confirmation", Duration::from_secs(3600))])
        .when(booking("b-1", 3, Booking::Requested))
        .then_no_commands();
}

#[test]
fn a_mismatch_shows_a_readable_diff() {
    let harness =
        ProcessManagerHarness::new(Bookings).given([booking("b-1", 1, Booking::Requested)]);
    let mismatch = harness
        .check_commands([
            Command::HoldRoom("b-1".into()),
            Command::Notify("b-1".into()),
        ])
        .expect_err("the commands differ");
    let message = mismatch.to_string();
    println!("{message}");
    assert!(message.starts_with(
        "process manager `bookings`: the commands differ from the expected ones (- expected, + actual):"
    ), "{message}");
    assert!(
        message.contains("  1  HoldRoom(\n") || message.contains("  1  HoldRoom("),
        "{message}"
    );
    assert!(message.contains("- 2  Notify("), "{message}");
    assert!(message.contains("+ 2  ChargeDeposit("), "{message}");

    let deadlines = harness
        .check_deadlines([("b-1", "confirmation", Duration::from_secs(60))])
        .expect_err("the deadline is an hour away");
    assert!(
        deadlines.to_string().contains("the deadlines differ"),
        "{deadlines}"
    );
    assert!(
        deadlines.to_string().contains("due in 3600s"),
        "{deadlines}"
    );
}

#[test]
#[should_panic(expected = "the commands differ from the expected ones")]
fn then_commands_panics_with_the_mismatch() {
    ProcessManagerHarness::new(Bookings)
        .given([booking("b-1", 1, Booking::Requested)])
        .then_no_commands();
}
