//! The aggregate: state folded from its events, deciding on commands.

use async_trait::async_trait;

use crate::domain_event::DomainEvent;
use crate::error::ValidationError;
use crate::stream_id::StreamId;

/// A consistency boundary: its state is folded from its own stream's events, and it decides on
/// commands by returning new events or a domain error.
///
/// `apply` must be deterministic and infallible: it only folds facts that already happened.
/// Rules live in `handle`, which may be async to consult [`Aggregate::Services`] (a price list,
/// a clock); it may run more than once for one command when a concurrent writer forces a retry,
/// so it must not have side effects beyond returning events.
///
/// ```
/// use async_trait::async_trait;
/// use eventsource_core::{Aggregate, DomainEvent};
/// # use eventsource_core::{DecodeError, EncodeError};
/// # #[derive(Debug)] enum CounterEvent { Incremented }
/// # impl DomainEvent for CounterEvent {
/// #     const EVENT_TYPES: &'static [&'static str] = &["Incremented"];
/// #     fn event_type(&self) -> &'static str { "Incremented" }
/// #     fn schema_version(&self) -> u32 { 1 }
/// #     fn encode(&self) -> Result<serde_json::Value, EncodeError> { Ok(serde_json::Value::Null) }
/// #     fn decode(_: &str, _: u32, _: &serde_json::Value) -> Result<Self, DecodeError> { Ok(Self::Incremented) }
/// # }
///
/// #[derive(Default)]
/// struct Counter { value: u32 }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("the counter is full")]
/// struct Full;
///
/// #[async_trait]
/// impl Aggregate for Counter {
///     const CATEGORY: &'static str = "counter";
///     type Event = CounterEvent;
///     type Command = ();
///     type Error = Full;
///     type Services = ();
///
///     fn apply(&mut self, _event: &CounterEvent) {
///         self.value += 1;
///     }
///
///     async fn handle(&self, _: &(), _: &()) -> Result<Vec<CounterEvent>, Full> {
///         if self.value >= 3 { Err(Full) } else { Ok(vec![CounterEvent::Incremented]) }
///     }
/// }
/// ```
#[async_trait]
pub trait Aggregate: Default + Send + Sync + Sized + 'static {
    /// The stream category of this aggregate type, such as `order`.
    const CATEGORY: &'static str;
    /// The aggregate's events.
    type Event: DomainEvent;
    /// The commands it decides on.
    type Command: Send + Sync;
    /// Its domain error: why a command was refused.
    type Error: std::error::Error + Send + Sync + 'static;
    /// What `handle` may consult (use `()` when nothing).
    type Services: Send + Sync;

    /// Folds one event into the state.
    fn apply(&mut self, event: &Self::Event);

    /// Decides on a command: the events to append, or why not.
    async fn handle(
        &self,
        command: &Self::Command,
        services: &Self::Services,
    ) -> Result<Vec<Self::Event>, Self::Error>;

    /// The stream id of the instance `id` of this aggregate type.
    fn stream_id(id: impl Into<String>) -> Result<StreamId, ValidationError> {
        StreamId::new(Self::CATEGORY, id)
    }
}
