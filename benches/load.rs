//! Aggregate loads: an order with a long history loaded by the repository, without and with a
//! snapshot, against a raw sqlx read and fold of the same stream, in the same run.
//!
//! ```text
//! DATABASE_URL=postgres://... cargo bench --bench load
//! ```
//!
//! - **framework, full fold**: `Repository::load` reading every event of the stream (pages of
//!   1,000) and folding it with the order's `apply`;
//! - **framework, snapshot**: the same with `with_snapshots`, a snapshot kept `TAIL` events
//!   before the head (what a snapshot every `2 * TAIL` events leaves on average);
//! - **baseline**: one sqlx query selecting the stream's type, schema version and payload in
//!   version order, each row decoded with the same `DomainEvent::decode` and folded with the
//!   same `apply`; no metadata, no version checks.
//!
//! Loads alternate between the sides; the ratio (not the absolute number) is what to compare.

#[allow(dead_code)] // the aggregate's command side is not used here
#[path = "../examples/order/domain.rs"]
mod domain;

use std::time::{Duration, Instant};

use domain::{Order, OrderEvent};
use eventsource::postgres::testing::TestDatabase;
use eventsource::postgres::PostgresStore;
use eventsource::{
    Aggregate, BoxError, DomainEvent, EventAppender, EventMetadata, ExpectedVersion, NewEvent,
    Repository, Snapshot, SnapshotPolicy, SnapshotStore, StreamVersion,
};
use sqlx::Row;

/// Events in the loaded stream.
const HISTORY: u64 = 10_000;
/// Events after the snapshot.
const TAIL: u64 = 500;
/// Loads per side.
const LOADS: usize = 30;

/// The `n`-th event of the order: placed, then items added and removed in turn.
fn order_event(n: u64) -> OrderEvent {
    let sku = format!("SKU-{}", n % 40);
    match n {
        0 => OrderEvent::Placed {
            customer: "carol".into(),
        },
        n if n % 3 == 0 => OrderEvent::ItemRemoved { sku },
        n => OrderEvent::ItemAdded {
            sku,
            quantity: 1 + (n % 5) as u32,
            unit_price_cents: 100 + n % 1_000,
        },
    }
}

/// Appends events `from..to` of the order's history, 1,000 per append.
async fn append_history(
    store: &PostgresStore,
    id: &eventsource::StreamId,
    from: u64,
    to: u64,
) -> Result<(), BoxError> {
    for start in (from..to).step_by(1_000) {
        let events = (start..to.min(start + 1_000))
            .map(|n| NewEvent::from_domain(&order_event(n), EventMetadata::default()))
            .collect::<Result<Vec<_>, _>>()?;
        store.append(id, ExpectedVersion::Any, events).await?;
    }
    Ok(())
}

/// The baseline: read the stream with one query and fold it.
async fn raw_load(store: &PostgresStore, id: &str) -> Result<Order, BoxError> {
    let rows = sqlx::query(
        "SELECT event_type, schema_version, payload FROM eventsource.events
         WHERE category = 'order' AND stream_id = $1 ORDER BY version",
    )
    .bind(id)
    .fetch_all(store.pool())
    .await?;
    let mut order = Order::default();
    for row in rows {
        let event_type: String = row.try_get("event_type")?;
        let schema_version: i32 = row.try_get("schema_version")?;
        let payload: serde_json::Value = row.try_get("payload")?;
        order.apply(&OrderEvent::decode(
            &event_type,
            u32::try_from(schema_version)?,
            &payload,
        )?);
    }
    Ok(order)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let db = TestDatabase::create().await?;
    let store = db.store().await?;
    println!("eventsource load benchmarks (database {})\n", db.name());

    let id = Order::stream_id("long-lived")?;
    let plain = Repository::<Order, _>::new(store.clone());
    let snapshotted = Repository::<Order, _>::new(store.clone())
        .with_snapshots(store.clone(), SnapshotPolicy::every(2 * TAIL));

    // The history up to the snapshot, the snapshot, then the tail.
    append_history(&store, &id, 0, HISTORY - TAIL).await?;
    let at_snapshot = plain.load(&id).await?;
    store
        .save_snapshot(&Snapshot {
            stream_id: id.clone(),
            version: StreamVersion::new(HISTORY - TAIL)?,
            state_version: 1,
            state: serde_json::to_value(&at_snapshot.state)?,
        })
        .await?;
    append_history(&store, &id, HISTORY - TAIL, HISTORY).await?;
    sqlx::query("ANALYZE eventsource.events")
        .execute(store.pool())
        .await?;

    let expected = raw_load(&store, id.id()).await?;
    let (mut full, mut snapshot, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..LOADS {
        let start = Instant::now();
        let loaded = plain.load(&id).await?;
        full.push(start.elapsed());
        assert_eq!(
            (loaded.state, loaded.version.get()),
            (expected.clone(), HISTORY)
        );

        let start = Instant::now();
        let loaded = snapshotted.load(&id).await?;
        snapshot.push(start.elapsed());
        assert_eq!(
            (loaded.state, loaded.version.get()),
            (expected.clone(), HISTORY)
        );

        let start = Instant::now();
        let loaded = raw_load(&store, id.id()).await?;
        raw.push(start.elapsed());
        assert_eq!(loaded, expected);
    }

    let (full, snapshot, raw) = (median(full), median(snapshot), median(raw));
    println!(
        "load {HISTORY} events, full fold      {:>8.2} ms   baseline (raw sqlx read + fold) {:>8.2} ms   ratio {:.2}x",
        ms(full),
        ms(raw),
        raw.as_secs_f64() / full.as_secs_f64()
    );
    println!(
        "load from snapshot + {TAIL} events   {:>8.2} ms   baseline (raw sqlx read + fold) {:>8.2} ms   ratio {:.2}x",
        ms(snapshot),
        ms(raw),
        raw.as_secs_f64() / snapshot.as_secs_f64()
    );

    store.pool().close().await;
    db.drop_database().await?;
    Ok(())
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
