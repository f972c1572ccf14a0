//! What the order service tells other services: its public integration events, published to
//! RabbitMQ by a relay.

use eventsource::postgres::relay::{IntegrationEvent, Mapping};
use eventsource::{BoxError, Envelope};
use serde::{Deserialize, Serialize};

use crate::domain::OrderEvent;

/// The public `OrderConfirmed`, version 1: the contract the shipping service consumes. It is
/// not the domain event: its name, version and fields change only by agreement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderConfirmedV1 {
    /// The order's id.
    pub order_id: String,
}

/// Publishes confirmations only; the rest of the order's life stays inside the service.
pub struct PublicOrderEvents;

impl Mapping for PublicOrderEvents {
    type Event = Envelope<OrderEvent>;

    fn map(&self, event: &Envelope<OrderEvent>) -> Result<Option<IntegrationEvent>, BoxError> {
        Ok(match event.event {
            OrderEvent::Confirmed => Some(IntegrationEvent::new(
                "OrderConfirmed",
                1,
                &OrderConfirmedV1 {
                    order_id: event.stream_id.id().to_owned(),
                },
            )?),
            _ => None,
        })
    }
}
