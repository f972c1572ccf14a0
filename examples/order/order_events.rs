//! Order events as the read models consume them: decoded, tagged with the order they belong to,
//! and grouped per order within a batch.
//!
//! Both read models (`order_summary`, `customer_stats`) handle a batch the same way: group the
//! batch's events by order, load what they kept about those orders, fold the events in memory,
//! and write each touched order once. This file holds the shared first step.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use eventsource::{BoxError, DomainEvent, FeedFilter, RecordedEvent, StoreError, StreamVersion};

use crate::domain::{Order, OrderEvent, OrderStatus};

/// One order event, decoded, with where and when it was recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderChange {
    /// The order's id (the instance id of its stream, without the `order-` category).
    pub order_id: String,
    /// The event's version in the order's stream.
    pub version: StreamVersion,
    /// When the store recorded it.
    pub recorded_at: DateTime<Utc>,
    /// The event itself.
    pub event: OrderEvent,
}

impl OrderChange {
    /// Decodes a recorded event. A failure names the stream, version and type (see
    /// [`RecordedEvent::decode`]), so a projection can return it as its handler error.
    pub fn decode(event: &RecordedEvent) -> Result<Self, StoreError> {
        Ok(Self {
            order_id: event.stream_id.id().to_owned(),
            version: event.version,
            recorded_at: event.recorded_at,
            event: event.decode::<OrderEvent>()?,
        })
    }
}

/// The feed filter of both read models: the `order` category, the order event types.
pub fn order_filter() -> FeedFilter {
    FeedFilter::for_aggregate::<Order>()
}

/// Decodes a batch and groups it by order (orders sorted by id, each order's events in feed
/// order, which is version order).
pub fn decode_by_order(
    events: &[RecordedEvent],
) -> Result<BTreeMap<String, Vec<OrderChange>>, StoreError> {
    let mut by_order: BTreeMap<String, Vec<OrderChange>> = BTreeMap::new();
    for event in events {
        let change = OrderChange::decode(event)?;
        by_order
            .entry(change.order_id.clone())
            .or_default()
            .push(change);
    }
    Ok(by_order)
}

/// Reads a status back from the text the read models store (`OrderStatus`'s `Display`).
pub fn parse_status(text: &str) -> Result<OrderStatus, BoxError> {
    Ok(match text {
        "new" => OrderStatus::New,
        "open" => OrderStatus::Open,
        "confirmed" => OrderStatus::Confirmed,
        "shipped" => OrderStatus::Shipped,
        "cancelled" => OrderStatus::Cancelled,
        other => return Err(format!("unknown order status `{other}` in a read model").into()),
    })
}

/// The error for an order event that arrives before the order was placed (the aggregate never
/// emits one; a read model refuses it rather than invent a customer).
pub fn not_placed(order_id: &str, change: &OrderChange) -> BoxError {
    format!(
        "order {order_id}: {} at version {} arrived before OrderPlaced",
        change.event.event_type(),
        change.version
    )
    .into()
}

/// Converts a count or an amount to a PostgreSQL `bigint`, or names what does not fit.
pub fn bigint(value: u64, what: &str, order_id: &str) -> Result<i64, BoxError> {
    i64::try_from(value)
        .map_err(|_| format!("order {order_id}: {what} {value} does not fit a bigint").into())
}
