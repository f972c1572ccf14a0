//! Order events as the read models consume them, grouped per order within a batch.
//!
//! Both read models (`order_summary`, `customer_stats`) handle a batch the same way: group the
//! batch's events by order, load what they kept about those orders, fold the events in memory,
//! and write each touched order once. This file holds the shared first step and the helpers
//! both use; the runner hands them the events decoded (`Envelope<OrderEvent>`).

use std::collections::BTreeMap;

use eventsource::{BoxError, DomainEvent, Envelope, FeedFilter};

use crate::domain::{Order, OrderEvent, OrderStatus};

/// One order event as the read models receive it: decoded, with its stream (the order),
/// version and time.
pub type OrderChange = Envelope<OrderEvent>;

/// The feed filter of both read models: the `order` category (the runner adds the order
/// event types).
pub fn order_filter() -> FeedFilter {
    FeedFilter::for_aggregate::<Order>()
}

/// Groups a batch by order (orders sorted by id, each order's events in feed order, which is
/// version order).
pub fn by_order(changes: &[OrderChange]) -> BTreeMap<String, Vec<&OrderChange>> {
    let mut by_order: BTreeMap<String, Vec<&OrderChange>> = BTreeMap::new();
    for change in changes {
        by_order
            .entry(change.stream_id.id().to_owned())
            .or_default()
            .push(change);
    }
    by_order
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
pub fn not_placed(change: &OrderChange) -> BoxError {
    format!(
        "order {}: {} at version {} arrived before OrderPlaced",
        change.stream_id.id(),
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
