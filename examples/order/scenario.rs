//! The scripted scenario: orders that go through, commands that are refused, and two writers
//! colliding on one order, resolved by the repository's retry.

use std::error::Error;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use eventsource::{
    Aggregate, CommandContext, CommandError, EventStore, Repository, SnapshotPolicy, SnapshotStore,
    StreamId, StreamVersion,
};
use futures::TryStreamExt;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::domain::{Inventory, Order, OrderCommand, OrderServices};

type Orders<S> = Repository<Order, S>;

/// Runs the scenario on `store`, prints every order's stream, and returns the orders' ids.
pub async fn run<S: EventStore + SnapshotStore + Clone + 'static>(
    store: S,
) -> Result<Vec<StreamId>, Box<dyn Error>> {
    // A snapshot every 5 events: loads fold the latest snapshot and the events after it.
    let orders = Orders::new(store.clone()).with_snapshots(store.clone(), SnapshotPolicy::every(5));
    let alice = CommandContext::new().with_actor("alice@example.com");

    println!("\n== An order from placement to shipping");
    let first = new_order_id()?;
    let commands = [
        OrderCommand::PlaceOrder {
            customer: "alice".into(),
        },
        add("COFFEE-1KG", 2, 1_890),
        add("FILTERS-100", 1, 450),
        add("GRINDER", 1, 8_900),
        OrderCommand::RemoveItem {
            sku: "GRINDER".into(),
        },
        OrderCommand::Confirm,
        OrderCommand::Ship {
            tracking_number: "ZX-4411-93".into(),
        },
    ];
    for command in commands {
        execute(&orders, &first, command, &alice).await?;
    }
    let shipped = orders.load(&first).await?;
    println!(
        "   -> {} for {}: {} line(s), total {}",
        shipped.state.status,
        shipped.state.customer,
        shipped.state.lines.len(),
        money(shipped.state.total_cents())
    );
    if let Some(snapshot) = store.load_snapshot(&first).await? {
        println!(
            "   (loaded from its snapshot at version {} and the {} event(s) after it)",
            snapshot.version,
            shipped.version.get() - snapshot.version.get()
        );
    }

    println!("\n== Commands the order refuses");
    execute(&orders, &first, add("MUG", 1, 1_200), &alice).await?;
    execute(
        &orders,
        &first,
        OrderCommand::Cancel {
            reason: "changed my mind".into(),
        },
        &alice,
    )
    .await?;
    let bob = CommandContext::new().with_actor("bob@example.com");
    let second = new_order_id()?;
    execute(&orders, &second, OrderCommand::Confirm, &bob).await?;
    execute(
        &orders,
        &second,
        OrderCommand::PlaceOrder {
            customer: "bob".into(),
        },
        &bob,
    )
    .await?;
    execute(&orders, &second, OrderCommand::Confirm, &bob).await?;
    execute(
        &orders,
        &second,
        OrderCommand::Ship {
            tracking_number: "T-1".into(),
        },
        &bob,
    )
    .await?;
    execute(&orders, &second, add("TEA", 0, 700), &bob).await?;
    execute(&orders, &second, add("TEA", 3, 0), &bob).await?;
    execute(&orders, &second, add("SOLDOUT-KETTLE", 1, 4_500), &bob).await?;
    execute(&orders, &second, add("TEA", 3, 700), &bob).await?;
    execute(&orders, &second, add("TEA", 1, 650), &bob).await?;
    execute(
        &orders,
        &second,
        OrderCommand::Cancel {
            reason: "found it cheaper".into(),
        },
        &bob,
    )
    .await?;

    println!("\n== Two writers collide on one order");
    let third = new_order_id()?;
    let carol = CommandContext::new().with_actor("carol@example.com");
    execute(
        &orders,
        &third,
        OrderCommand::PlaceOrder {
            customer: "carol".into(),
        },
        &carol,
    )
    .await?;
    collide(&store, &third).await?;

    println!("\n== The streams");
    let created = vec![first, second, third];
    for id in &created {
        print_stream(&store, id).await?;
    }
    Ok(created)
}

/// Writer A loads the order and, while it waits on a slow stock check, writer B adds an item
/// and commits. A's append then meets a conflict; the repository reloads and decides again.
async fn collide<S: EventStore + Clone + 'static>(
    store: &S,
    order: &StreamId,
) -> Result<(), Box<dyn Error>> {
    let (entered_tx, entered_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel();
    let slow_stock = SlowStockCheck {
        entered: Mutex::new(Some(entered_tx)),
        release: Mutex::new(Some(release_rx)),
    };
    let writer_a = Orders::with_services(
        store.clone(),
        OrderServices {
            inventory: Arc::new(slow_stock),
        },
    );
    let writer_b = Orders::new(store.clone());
    let ctx_a = CommandContext::new().with_actor("writer-a");
    let ctx_b = CommandContext::new().with_actor("writer-b");

    let order_a = order.clone();
    let a = tokio::spawn(async move {
        writer_a
            .execute(&order_a, add("MUG", 2, 1_200), &ctx_a)
            .await
    });
    entered_rx.await?;
    println!("   writer A loaded the order and is checking stock...");
    let b = writer_b.execute(order, add("TEA", 1, 700), &ctx_b).await?;
    println!("   writer B added TEA and committed version {}", b.version);
    release_tx.send(()).map_err(|_| "writer A stopped early")?;
    let a = a.await??;
    for conflict in &a.conflicts {
        println!("   writer A met a conflict: {conflict}");
    }
    println!(
        "   writer A retried and committed version {} after {} attempts; the order holds {} line(s)",
        a.version,
        a.attempts,
        a.state.lines.len()
    );
    Ok(())
}

/// A stock check that, the first time, signals it was reached and waits to be released.
struct SlowStockCheck {
    entered: Mutex<Option<oneshot::Sender<()>>>,
    release: Mutex<Option<oneshot::Receiver<()>>>,
}

#[async_trait]
impl Inventory for SlowStockCheck {
    async fn in_stock(&self, _sku: &str, _quantity: u32) -> bool {
        let entered = self.entered.lock().ok().and_then(|mut e| e.take());
        let release = self.release.lock().ok().and_then(|mut r| r.take());
        if let (Some(entered), Some(release)) = (entered, release) {
            let _ = entered.send(());
            let _ = release.await;
        }
        true
    }
}

/// Runs one command and prints what happened; a refusal is printed, not returned.
async fn execute<S: EventStore>(
    orders: &Orders<S>,
    id: &StreamId,
    command: OrderCommand,
    ctx: &CommandContext,
) -> Result<(), Box<dyn Error>> {
    let label = format!("{command:?}");
    // Each command gets its own id (the causation of its events) within the caller's chain.
    match orders.execute(id, command, &ctx.next_command()).await {
        Ok(done) => {
            let types: Vec<_> = done
                .events
                .iter()
                .map(|e| eventsource::DomainEvent::event_type(e))
                .collect();
            println!(
                "   ok      {label:<70} -> v{} {}",
                done.version,
                types.join(", ")
            );
            Ok(())
        }
        Err(CommandError::Rejected(why)) => {
            println!("   refused {label:<70} -> {why}");
            Ok(())
        }
        Err(other) => Err(other.into()),
    }
}

async fn print_stream<S: EventStore>(store: &S, id: &StreamId) -> Result<(), Box<dyn Error>> {
    println!("{id}");
    let mut events = store.read_stream(id, StreamVersion::FIRST);
    while let Some(e) = events.try_next().await? {
        let short = |id: Option<Uuid>| {
            id.map_or("-".to_owned(), |u| u.simple().to_string()[24..].to_owned())
        };
        println!(
            "   v{:<2} {:<15} {:<62} actor={:<18} correlation=..{} causation=..{} at {}",
            e.version,
            e.event_type,
            e.payload.to_string(),
            e.metadata.actor.as_deref().unwrap_or("-"),
            short(e.metadata.correlation_id),
            short(e.metadata.causation_id),
            e.recorded_at.format("%H:%M:%S%.3f"),
        );
    }
    Ok(())
}

fn new_order_id() -> Result<StreamId, Box<dyn Error>> {
    Ok(Order::stream_id(Uuid::now_v7().to_string())?)
}

fn add(sku: &str, quantity: u32, unit_price_cents: u64) -> OrderCommand {
    OrderCommand::AddItem {
        sku: sku.into(),
        quantity,
        unit_price_cents,
    }
}

fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}
