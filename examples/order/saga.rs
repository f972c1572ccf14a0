//! `order saga`: the fulfilment saga on PostgreSQL, in three cases: paid, payment declined
//! (compensated), not paid in time (cancelled by its deadline).

use std::error::Error;
use std::time::Duration;

use eventsource::postgres::process_manager::{self, ProcessManagerOptions, ProcessManagerRunner};
use eventsource::postgres::{sqlx, PostgresStore};
use eventsource::{
    Aggregate, CancellationToken, CommandContext, FeedOptions, Repository, StreamId,
};
use uuid::Uuid;

use crate::domain::{Order, OrderCommand};
use crate::fulfilment::{Fulfilment, FulfilmentState, NAME, ORDER_PREFIX};
use crate::payment::{Payment, PaymentCommand, PaymentStatus, DECLINED_CARD_PREFIX};

/// The payment deadline of the demo (15 minutes in a real shop).
const PAYMENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the three cases with the saga's runner live, then prints what each instance did.
pub async fn run(store: &PostgresStore) -> Result<(), Box<dyn Error>> {
    let fulfilment = Fulfilment::new(store.clone(), PAYMENT_TIMEOUT);
    let options = ProcessManagerOptions {
        feed: FeedOptions::default().with_poll_interval(Duration::from_millis(200)),
        ..ProcessManagerOptions::default()
    };
    let runner = std::sync::Arc::new(
        ProcessManagerRunner::new(store.clone(), fulfilment).with_options(options),
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let runner = runner.clone();
        let shutdown = shutdown.clone();
        async move { runner.run(shutdown).await }
    });

    let run_id = Uuid::now_v7().simple().to_string();
    let cases = [
        ("paid", Some("4242-4242-4242-4242")),
        ("declined", Some(DECLINED_CARD_PREFIX)),
        ("unpaid", None),
    ];
    let orders = Repository::<Order, _>::new(store.clone());
    let payments = Repository::<Payment, _>::new(store.clone());
    let mut placed = Vec::new();
    for (case, _) in &cases {
        let id = format!("{ORDER_PREFIX}{}-{case}", &run_id[20..]);
        let stream = Order::stream_id(&id)?;
        let ctx = CommandContext::new().with_actor("customer");
        println!(
            "\n== Order {id} ({case}); its correlation id: {}",
            ctx.correlation_id
        );
        for command in [
            OrderCommand::PlaceOrder {
                customer: "dana".into(),
            },
            OrderCommand::AddItem {
                sku: "COFFEE-1KG".into(),
                quantity: 2,
                unit_price_cents: 1_890,
            },
            OrderCommand::Confirm,
        ] {
            orders
                .execute(&stream, command, &ctx.next_command())
                .await?;
        }
        placed.push((id, ctx));
    }

    // The customer pays (or not) once the saga has asked for the payment.
    for ((id, ctx), (case, card)) in placed.iter().zip(&cases) {
        let Some(card) = card else {
            println!("\n-- {id}: the customer does not pay; the deadline ({PAYMENT_TIMEOUT:?}) will cancel it");
            continue;
        };
        let stream = Payment::stream_id(id)?;
        wait_for(|| async {
            Ok(payments.load(&stream).await?.state.status == PaymentStatus::Requested)
        })
        .await?;
        println!(
            "\n-- {id}: the saga asked for the payment; the customer pays ({case}) with {card}"
        );
        payments
            .execute(
                &stream,
                PaymentCommand::Pay {
                    card: (*card).to_owned(),
                },
                &ctx.next_command(),
            )
            .await?;
    }

    for (id, _) in &placed {
        wait_for(|| async {
            Ok(
                process_manager::instance::<FulfilmentState>(store, NAME, id)
                    .await?
                    .is_some_and(|i| i.completed),
            )
        })
        .await?;
    }
    shutdown.cancel();
    task.await??;

    for (id, _) in &placed {
        show(store, id).await?;
    }
    Ok(())
}

/// Polls `done` every 100 ms, for up to 15 s.
async fn wait_for<F, Fut>(done: F) -> Result<(), Box<dyn Error>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<bool, Box<dyn Error>>>,
{
    for _ in 0..150 {
        if done().await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the saga did not get there within 15 s".into())
}

/// An event of the chain: category, stream id, version, type, causation id, saga command.
type EventRow = (String, String, i64, String, Option<String>, Option<String>);

/// Prints an instance's outcome, the commands it issued and every event of its correlation id.
async fn show(store: &PostgresStore, id: &str) -> Result<(), Box<dyn Error>> {
    let Some(instance) = process_manager::instance::<FulfilmentState>(store, NAME, id).await?
    else {
        return Err(format!("no saga instance for {id}").into());
    };
    println!(
        "\n== Instance {id}: {:?}{}",
        instance.state.stage,
        instance
            .state
            .cancelled_because
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    println!(
        "   correlation id {} links everything below",
        instance.correlation_id
    );
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT category, stream_id, version, event_type, metadata->>'causation_id',
                metadata->'headers'->>'command'
         FROM eventsource.events
         WHERE metadata->>'correlation_id' = $1
         ORDER BY transaction_id, position",
    )
    .bind(instance.correlation_id.to_string())
    .fetch_all(store.pool())
    .await?;
    println!("   {:<40} {:<18} caused by", "stream", "event");
    for (category, stream, version, event_type, causation, command) in rows {
        let stream = StreamId::new(category, stream)?;
        let by = match command {
            Some(command) => format!(
                "saga: {command} (command id {})",
                causation.unwrap_or_default()
            ),
            None => "the customer".to_owned(),
        };
        println!(
            "   {:<40} {event_type:<18} {by}",
            format!("{stream} v{version}")
        );
    }
    Ok(())
}
