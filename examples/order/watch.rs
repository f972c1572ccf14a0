//! `watch`: both read models following the feed live under one supervisor, while orders come
//! in; the supervisor's status view printed every second, then a clean shutdown.

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use eventsource::postgres::{ComponentStatus, PostgresStore};
use eventsource::{CommandContext, Repository};
use tokio_util::sync::CancellationToken;

use eventsource::postgres::relay::Relay;
use eventsource::rabbitmq::{PublisherOptions, RabbitMqPublisher};

use crate::domain::Order;
use crate::public_events::PublicOrderEvents;
use crate::read_models::ReadModels;
use crate::seed;

/// Seconds the view is shown after the last order.
const AFTER_LAST_ORDER: u64 = 2;

/// Runs the read models under a supervisor, places `orders` generated orders one a second,
/// prints the status view each second, then cancels the shutdown token and waits for the
/// runners to stop.
///
/// With `relay_to` (a RabbitMQ URL), a relay runs under the same supervisor and publishes each
/// order's confirmation to the exchange `orders`, where the shipping example consumes it.
pub async fn run(
    store: &PostgresStore,
    orders: u64,
    relay_to: Option<&str>,
) -> Result<(), Box<dyn Error>> {
    let mut supervisor = ReadModels::new()?.supervisor(store);
    if let Some(url) = relay_to {
        let publisher = RabbitMqPublisher::new(url, PublisherOptions::new("orders"))?;
        supervisor = supervisor.with(Relay::new(
            store.clone(),
            "orders-to-rabbitmq",
            publisher,
            PublicOrderEvents,
        ));
        println!("Relaying OrderConfirmed to RabbitMQ at {url} (exchange `orders`)");
    }
    let supervisor = Arc::new(supervisor);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (supervisor, shutdown) = (supervisor.clone(), shutdown.clone());
        async move { supervisor.run(shutdown).await }
    });

    println!("\n== The read models, live under a supervisor");
    let repository = Repository::<Order, _>::new(store.clone());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    for second in 1..=orders + AFTER_LAST_ORDER {
        if second <= orders {
            // Order numbers past the scenario's: the generator varies its orders by number.
            // Each order is its own business transaction: its own correlation id, which every
            // event it causes carries, here and in the services its events reach.
            let ctx = CommandContext::new().with_actor("watch");
            let events = seed::seed_order(&repository, &ctx, second).await?;
            println!(
                "\n[{second} s] placed an order ({events} events, correlation id {})",
                ctx.correlation_id
            );
        } else {
            println!("\n[{second} s]");
        }
        tick.tick().await;
        print_status(&supervisor.status());
    }

    println!("\nShutting down: each runner finishes its batch in hand.");
    shutdown.cancel();
    running.await??;
    print_status(&supervisor.status());
    Ok(())
}

/// One line per component.
fn print_status(status: &[ComponentStatus]) {
    println!(
        "   {:<26} {:<12} {:>7} {:>10} {:>7} {:>8}  last error",
        "component", "state", "for", "position", "events", "restarts"
    );
    let now = Utc::now();
    for component in status {
        let position = component
            .position
            .map_or_else(|| "-".to_owned(), |p| p.to_string());
        let seconds = (now - component.since).num_milliseconds() as f64 / 1000.0;
        println!(
            "   {:<26} {:<12} {:>6.1}s {:>10} {:>7} {:>8}  {}",
            component.name,
            component.state,
            seconds,
            position,
            component.events_handled,
            component.restarts,
            component.last_error.as_deref().unwrap_or("-")
        );
    }
}
