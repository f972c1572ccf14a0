//! The order example's rules, in the test kit's given / when / then: each case reads as the
//! rule it checks. The aggregate is the example's own (`examples/order/domain.rs`).

#[allow(dead_code)]
#[path = "../examples/order/domain.rs"]
mod domain;

use std::sync::Arc;

use domain::{
    Inventory, Order, OrderCommand, OrderError, OrderEvent, OrderServices, OrderStatus,
    MAX_QUANTITY,
};
use eventsource::testkit::AggregateTest;
use eventsource::{async_trait, CommandContext};

fn placed() -> OrderEvent {
    OrderEvent::Placed {
        customer: "ada".into(),
    }
}

fn added(sku: &str, quantity: u32, unit_price_cents: u64) -> OrderEvent {
    OrderEvent::ItemAdded {
        sku: sku.into(),
        quantity,
        unit_price_cents,
    }
}

fn add(sku: &str, quantity: u32, unit_price_cents: u64) -> OrderCommand {
    OrderCommand::AddItem {
        sku: sku.into(),
        quantity,
        unit_price_cents,
    }
}

#[tokio::test]
async fn an_order_is_placed_once() {
    AggregateTest::<Order>::new()
        .when(OrderCommand::PlaceOrder {
            customer: "ada".into(),
        })
        .await
        .then_expect([placed()]);
    AggregateTest::<Order>::new()
        .given([placed()])
        .when(OrderCommand::PlaceOrder {
            customer: "bob".into(),
        })
        .await
        .then_refuses_with(OrderError::AlreadyPlaced);
}

#[tokio::test]
async fn nothing_happens_to_an_order_not_placed() {
    AggregateTest::<Order>::new()
        .when(OrderCommand::Confirm)
        .await
        .then_refuses_with(OrderError::NotPlaced);
}

#[tokio::test]
async fn items_are_added_at_one_price_within_the_quantity_limit() {
    AggregateTest::<Order>::new()
        .given([placed(), added("A-1", 2, 250)])
        .when(add("A-1", 1, 250))
        .await
        .then_expect([added("A-1", 1, 250)]);
    AggregateTest::<Order>::new()
        .given([placed(), added("A-1", 2, 250)])
        .when(add("A-1", 1, 300))
        .await
        .then_refuses(|e| matches!(e, OrderError::PriceMismatch { existing: 250, .. }));
    AggregateTest::<Order>::new()
        .given([placed(), added("A-1", MAX_QUANTITY, 250)])
        .when(add("A-1", 1, 250))
        .await
        .then_refuses(|e| matches!(e, OrderError::InvalidQuantity(_)));
}

#[tokio::test]
async fn an_empty_order_cannot_be_confirmed() {
    AggregateTest::<Order>::new()
        .given([placed()])
        .when(OrderCommand::Confirm)
        .await
        .then_refuses(|e| matches!(e, OrderError::EmptyOrder));
    // Emptied again: a removed line no longer counts.
    AggregateTest::<Order>::new()
        .given([
            placed(),
            added("A-1", 1, 250),
            OrderEvent::ItemRemoved { sku: "A-1".into() },
        ])
        .when(OrderCommand::Confirm)
        .await
        .then_refuses_with(OrderError::EmptyOrder);
}

#[tokio::test]
async fn a_confirmed_order_is_final_and_ships() {
    let confirmed = [placed(), added("A-1", 1, 250), OrderEvent::Confirmed];
    AggregateTest::<Order>::new()
        .given(confirmed.clone())
        .when(add("B-2", 1, 100))
        .await
        .then_refuses_with(OrderError::ItemsFinal(OrderStatus::Confirmed));
    let then = AggregateTest::<Order>::new()
        .given(confirmed.clone())
        .when(OrderCommand::Ship {
            tracking_number: "TRK-1".into(),
        })
        .await;
    then.then_expect([OrderEvent::Shipped {
        tracking_number: "TRK-1".into(),
    }]);
    assert_eq!(then.state().map(|o| o.status), Some(OrderStatus::Shipped));
    AggregateTest::<Order>::new()
        .given(confirmed)
        .given([OrderEvent::Shipped {
            tracking_number: "TRK-1".into(),
        }])
        .when(OrderCommand::Cancel {
            reason: "too late".into(),
        })
        .await
        .then_refuses_with(OrderError::CannotCancel(OrderStatus::Shipped));
}

/// An inventory where nothing is in stock.
struct Empty;

#[async_trait]
impl Inventory for Empty {
    async fn in_stock(&self, _: &str, _: u32) -> bool {
        false
    }
}

#[tokio::test]
async fn the_inventory_is_consulted() {
    AggregateTest::<Order>::with_services(OrderServices {
        inventory: Arc::new(Empty),
    })
    .given([placed()])
    .when(add("A-1", 1, 250))
    .await
    .then_refuses_with(OrderError::OutOfStock("A-1".into()));
}

#[test]
fn events_carry_the_commands_metadata() {
    let ctx = CommandContext::new().with_actor("ada@example.com");
    let then = AggregateTest::<Order>::new()
        .for_instance("8f3c2a")
        .with_context(ctx.clone())
        .given([placed(), added("A-1", 1, 250)])
        .when_blocking(OrderCommand::Confirm);
    then.then_expect([OrderEvent::Confirmed]);
    let confirmed = &then.recorded()[0];
    assert_eq!(confirmed.stream_id.to_string(), "order-8f3c2a");
    assert_eq!(confirmed.version.get(), 3);
    assert_eq!(confirmed.metadata.actor.as_deref(), Some("ada@example.com"));
    assert_eq!(confirmed.metadata.causation_id, Some(ctx.command_id));
}
