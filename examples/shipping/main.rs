//! The shipping service: a second service, in its own process, that consumes the order
//! service's public `OrderConfirmed` events from RabbitMQ through the inbox, and records each
//! shipment in its own table with the correlation id the order's command started.
//!
//! ```text
//! cargo run --example shipping                        # consume until Ctrl-C
//! cargo run --example shipping -- --stop-after 3      # ... or until 3 orders are shipped
//! cargo run --example order -- watch --relay          # in another terminal: orders, relayed to RabbitMQ
//! ```
//!
//! Each message is handled in one PostgreSQL transaction that records its id, so an order is
//! shipped once even when RabbitMQ delivers its confirmation again.

use std::error::Error;

use clap::Parser;
use eventsource::postgres::inbox::{Inbox, InboxHandler, IncomingMessage};
use eventsource::postgres::{sqlx, PgConnection, PostgresStore, DEFAULT_DATABASE_URL};
use eventsource::rabbitmq::{QueueTopology, RabbitMqInbox};
use eventsource::CancellationToken;
use serde::Deserialize;

/// The exchange the order service's relay publishes to.
const EXCHANGE: &str = "orders";

/// Ships confirmed orders.
#[derive(Parser)]
#[command(about)]
struct Args {
    /// The PostgreSQL server (default: DATABASE_URL, else postgres://postgres@127.0.0.1:5432/postgres).
    #[arg(long)]
    database_url: Option<String>,
    /// The RabbitMQ server (default: RABBITMQ_URL, else amqp://guest:guest@127.0.0.1:5672/%2f).
    #[arg(long)]
    rabbitmq_url: Option<String>,
    /// Stop once this many orders are shipped by this run (default: run until Ctrl-C).
    #[arg(long)]
    stop_after: Option<u64>,
}

/// The public event, version 1, as the order service documents it.
#[derive(Deserialize)]
struct OrderConfirmedV1 {
    order_id: String,
}

/// Records a shipment per confirmed order, in the inbox's transaction.
struct ShipOrders {
    shipped: tokio::sync::mpsc::UnboundedSender<String>,
}

#[eventsource::async_trait]
impl InboxHandler for ShipOrders {
    type Error = Box<dyn Error + Send + Sync>;

    async fn handle(
        &self,
        tx: &mut PgConnection,
        message: &IncomingMessage,
    ) -> Result<(), Self::Error> {
        if message.event_type() != Some("OrderConfirmed")
            || message.header("event-version") != Some("1")
        {
            return Err(format!(
                "shipping reads OrderConfirmed version 1, not {:?} version {:?}",
                message.event_type(),
                message.header("event-version")
            )
            .into());
        }
        let event: OrderConfirmedV1 = message.json()?;
        let tracking_number = format!(
            "TRK-{}",
            &message.message_id[message.message_id.len() - 8..]
        );
        sqlx::query(include_str!("record_shipment.sql"))
            .bind(&event.order_id)
            .bind(&tracking_number)
            .bind(message.correlation_id())
            .bind(&message.message_id)
            .execute(&mut *tx)
            .await?;
        let _ = self.shipped.send(format!(
            "shipped order {} as {tracking_number} (correlation id {})",
            event.order_id,
            message
                .correlation_id()
                .map_or_else(|| "-".to_owned(), |c| c.to_string())
        ));
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let database_url = args
        .database_url
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
    let rabbitmq_url = args
        .rabbitmq_url
        .or_else(|| std::env::var("RABBITMQ_URL").ok())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let store = PostgresStore::connect(&database_url).await?;
    store.migrate().await?;
    sqlx::raw_sql(include_str!("shipments.sql"))
        .execute(store.pool())
        .await?;

    // The queue `shipping`, bound to the order service's exchange for confirmations only;
    // messages the handler keeps failing on go to `shipping.dead-letter`.
    let consumer = RabbitMqInbox::new(
        &rabbitmq_url,
        Inbox::new(store.clone(), "shipping"),
        QueueTopology::new(EXCHANGE, "shipping").bind("order.OrderConfirmed"),
    )?;
    consumer.declare().await?;
    println!(
        "Shipping: consuming OrderConfirmed from RabbitMQ at {rabbitmq_url} (queue `shipping`)"
    );

    let (shipped, mut shipments) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let printer = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let mut count = 0;
            while let Some(line) = shipments.recv().await {
                count += 1;
                println!("   {line}");
                if args.stop_after.is_some_and(|stop| count >= stop) {
                    shutdown.cancel();
                }
            }
        }
    });
    let ctrl_c = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                shutdown.cancel();
            }
        })
    };
    let result = consumer.run(&ShipOrders { shipped }, shutdown).await;
    ctrl_c.abort();
    printer.abort();
    result?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM shipping.shipments")
        .fetch_one(store.pool())
        .await?;
    println!("Shipping: {total} shipments recorded in shipping.shipments");
    store.close().await;
    Ok(())
}
