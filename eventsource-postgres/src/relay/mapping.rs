//! What a relay publishes: a [`Mapping`] turns a domain event into a public [`IntegrationEvent`].

use eventsource_core::{BoxError, FeedFilter, FeedItem, RecordedEvent};
use serde::Serialize;

/// A public event: the contract other services consume, with its own stable name and version,
/// independent of the domain event it was made from.
#[derive(Debug, Clone, PartialEq)]
pub struct IntegrationEvent {
    /// Its stable public name (the last part of the routing key or subject).
    pub name: String,
    /// Its schema version (1 or more).
    pub version: u32,
    /// Its JSON body.
    pub payload: serde_json::Value,
}

impl IntegrationEvent {
    /// An integration event named `name`, version `version`, whose body is `payload` as JSON.
    ///
    /// ```
    /// use eventsource_postgres::relay::IntegrationEvent;
    /// #[derive(serde::Serialize)]
    /// struct OrderShipped { order_id: String }
    /// let public = IntegrationEvent::new("OrderShipped", 2, &OrderShipped { order_id: "o-1".into() })?;
    /// assert_eq!(public.payload["order_id"], "o-1");
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn new(
        name: impl Into<String>,
        version: u32,
        payload: &impl Serialize,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            name: name.into(),
            version,
            payload: serde_json::to_value(payload)?,
        })
    }
}

/// Chooses what a relay publishes, and in what public form.
///
/// `Event` is what the mapping sees: an [`Envelope`](eventsource_core::Envelope) of a domain
/// event enum (the relay then reads only that enum's event types), or the raw
/// [`RecordedEvent`].
///
/// ```
/// use eventsource_core::{BoxError, Envelope, FeedFilter};
/// use eventsource_postgres::relay::{IntegrationEvent, Mapping};
/// # use eventsource_core::*;
/// # #[derive(Debug)] enum OrderEvent { Placed { total: u64 }, Confirmed }
/// # impl DomainEvent for OrderEvent {
/// #     const EVENT_TYPES: &'static [&'static str] = &["OrderPlaced", "OrderConfirmed"];
/// #     fn event_type(&self) -> &'static str { "OrderConfirmed" }
/// #     fn schema_version(&self) -> u32 { 1 }
/// #     fn encode(&self) -> Result<serde_json::Value, EncodeError> { Ok(serde_json::json!({})) }
/// #     fn decode(_: &str, _: u32, _: &serde_json::Value) -> Result<Self, DecodeError> { Ok(OrderEvent::Confirmed) }
/// # }
///
/// /// Publishes confirmations only, as the public `OrderConfirmed` version 1.
/// struct PublicOrders;
///
/// impl Mapping for PublicOrders {
///     type Event = Envelope<OrderEvent>;
///
///     fn map(&self, event: &Envelope<OrderEvent>) -> Result<Option<IntegrationEvent>, BoxError> {
///         Ok(match &event.event {
///             OrderEvent::Confirmed => Some(IntegrationEvent::new(
///                 "OrderConfirmed",
///                 1,
///                 &serde_json::json!({ "order_id": event.stream_id.id() }),
///             )?),
///             OrderEvent::Placed { .. } => None,
///         })
///     }
/// }
/// ```
pub trait Mapping: Send + Sync + 'static {
    /// What the mapping sees of each event.
    type Event: FeedItem;

    /// Which events the relay reads (default: every event `Event` can hold). Events it leaves
    /// out are passed over without stalling the relay's checkpoint.
    fn filter(&self) -> FeedFilter {
        FeedFilter::all()
    }

    /// The integration event to publish for `event`, or `None` to publish nothing for it.
    ///
    /// An error parks the event as a relay dead letter (it would fail the same way next
    /// time), as a broker's refusal does.
    fn map(&self, event: &Self::Event) -> Result<Option<IntegrationEvent>, BoxError>;
}

/// The default mapping: every event, published as it is stored (its type name, schema version
/// and payload).
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishAsIs;

impl Mapping for PublishAsIs {
    type Event = RecordedEvent;

    fn map(&self, event: &RecordedEvent) -> Result<Option<IntegrationEvent>, BoxError> {
        Ok(Some(IntegrationEvent {
            name: event.event_type.clone(),
            version: event.schema_version,
            payload: event.payload.clone(),
        }))
    }
}
