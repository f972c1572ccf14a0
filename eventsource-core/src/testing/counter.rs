//! A minimal aggregate for tests and examples: a counter that refuses to pass a maximum.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregate;
use crate::domain_event::{DecodeError, DomainEvent, EncodeError};

/// The counter's only event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incremented {
    /// By how much.
    pub by: u32,
}

/// The counter's events (the contract suite cannot use the derive macro, which names the
/// facade crate, so this implementation is written out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CounterEvent {
    /// The counter went up.
    Incremented(Incremented),
}

impl DomainEvent for CounterEvent {
    const EVENT_TYPES: &'static [&'static str] = &["CounterIncremented"];

    fn event_type(&self) -> &'static str {
        "CounterIncremented"
    }

    fn schema_version(&self) -> u32 {
        1
    }

    fn encode(&self) -> Result<serde_json::Value, EncodeError> {
        let Self::Incremented(data) = self;
        serde_json::to_value(data).map_err(|source| EncodeError::Json {
            event_type: "CounterIncremented",
            source,
        })
    }

    fn decode(
        event_type: &str,
        schema_version: u32,
        payload: &serde_json::Value,
    ) -> Result<Self, DecodeError> {
        if event_type != "CounterIncremented" {
            return Err(DecodeError::UnknownType {
                event_type: event_type.to_owned(),
            });
        }
        if schema_version != 1 {
            return Err(DecodeError::UnsupportedVersion {
                event_type: event_type.to_owned(),
                schema_version,
                supported: 1,
            });
        }
        Incremented::deserialize(payload)
            .map(Self::Incremented)
            .map_err(|source| DecodeError::Payload {
                event_type: event_type.to_owned(),
                schema_version,
                source,
            })
    }
}

/// Adds to the counter.
#[derive(Debug, Clone, Copy)]
pub struct Increment(pub u32);

/// The counter refused to go past its maximum.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the counter would pass {max}")]
pub struct TooHigh {
    /// The maximum.
    pub max: u64,
}

/// A counter that refuses to go past [`Counter::MAX`].
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// The current value.
    pub value: u64,
    /// How many events were folded.
    pub events: u64,
}

impl Counter {
    /// The largest value the counter accepts.
    pub const MAX: u64 = 1_000_000;
}

#[async_trait]
impl Aggregate for Counter {
    const CATEGORY: &'static str = "counter";
    type Event = CounterEvent;
    type Command = Increment;
    type Error = TooHigh;
    type Services = ();

    fn apply(&mut self, event: &CounterEvent) {
        let CounterEvent::Incremented(Incremented { by }) = event;
        self.value += u64::from(*by);
        self.events += 1;
    }

    async fn handle(&self, command: &Increment, _: &()) -> Result<Vec<CounterEvent>, TooHigh> {
        if self.value + u64::from(command.0) > Self::MAX {
            return Err(TooHigh { max: Self::MAX });
        }
        Ok(vec![CounterEvent::Incremented(Incremented {
            by: command.0,
        })])
    }
}
