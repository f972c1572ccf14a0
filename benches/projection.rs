//! Projection catch-up throughput: the order example's `order_summary` projection run by
//! `ProjectionRunner::run_until_caught_up` from an empty checkpoint, against a raw sqlx loop
//! doing the same reads and writes, in the same run.
//!
//! ```text
//! DATABASE_URL=postgres://... cargo bench --bench projection
//! ```
//!
//! - **framework**: the runner (feed reads below the transaction-id horizon, checkpoint read and
//!   written in each batch's transaction) with the example's handler (one query loading the
//!   orders a batch continues, the events folded in memory, one `UNNEST` upsert per batch);
//! - **baseline**: keyset paging over `eventsource.events` by position with the same batch
//!   size (selecting only the columns the handler needs), the same decoding and the same
//!   handler code, one transaction per batch, no checkpoint;
//! - **per-event handler**: the runner again, with a handler that sends one upsert per event,
//!   the design the example's handler is measured against.
//!
//! The three read models are checked to be identical. The ratio (not the absolute number) is
//! what to compare across machines.

#[allow(dead_code)] // the aggregate's command side is not used here
#[path = "../examples/order/domain.rs"]
mod domain;
#[path = "../examples/order/order_events.rs"]
mod order_events;
#[path = "../examples/order/order_summary.rs"]
mod order_summary;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use eventsource::postgres::projection::{Projection, ProjectionRunner, RunnerOptions};
use eventsource::postgres::testing::TestDatabase;
use eventsource::postgres::PostgresStore;
use eventsource::{
    BoxError, DomainEvent, EventAppender, EventMetadata, ExpectedVersion, FeedFilter, FeedPosition,
    NewEvent, StreamId, StreamVersion,
};
use futures::future::try_join_all;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{Connection, Executor, PgConnection, PgPool, Postgres};

use domain::OrderEvent;
use order_events::OrderChange;
use order_summary::OrderSummaryProjection;

/// Order events to seed (a little more: whole orders).
const EVENTS: usize = 20_000;
/// Orders being written at once while seeding: their events interleave in the feed, so many
/// orders span two batches, as in a live system.
const ORDERS_IN_FLIGHT: usize = 64;
/// Events per batch, for the runner and the baseline alike (the runner's default).
const BATCH: usize = 500;
/// Times each contender runs (the best counts).
const ROUNDS: usize = 3;

type BenchResult<T> = Result<T, BoxError>;

#[tokio::main]
async fn main() -> BenchResult<()> {
    let db = TestDatabase::create().await?;
    let store = db.store().await?;
    let pool = store.pool().clone();
    println!(
        "eventsource projection benchmarks (database {})\n",
        db.name()
    );

    let seeded = seed(&store).await?;
    // Planner statistics as autovacuum would have them, and the whole table read once, so that
    // no contender pays for a plan made blind or for cold pages.
    sqlx::query("ANALYZE eventsource.events")
        .execute(&pool)
        .await?;
    sqlx::query("SELECT count(*), sum(length(payload::text)) FROM eventsource.events")
        .execute(&pool)
        .await?;
    println!(
        "seeded {seeded} order events ({ORDERS_IN_FLIGHT} orders in flight), batches of {BATCH}\n"
    );

    // Each contender builds its read model from nothing, ROUNDS times, interleaved; the best
    // time of each counts.
    let (mut framework, mut baseline, mut per_event) =
        (Duration::MAX, Duration::MAX, Duration::MAX);
    for round in 0..ROUNDS {
        if round > 0 {
            reset(&pool).await?;
        }
        baseline = baseline.min(time(raw_catch_up(&pool)).await?);
        framework = framework.min(time(catch_up(&store, OrderSummaryProjection)).await?);
        per_event = per_event.min(time(catch_up(&store, PerEventSummary)).await?);
    }

    report("runner, batched upserts", seeded, framework, baseline);
    report("runner, statement per event", seeded, per_event, baseline);
    println!(
        "batched vs per-event handler: {:.2}x",
        per_event.as_secs_f64() / framework.as_secs_f64()
    );

    let framework_rows = checksum(&pool, "public").await?;
    let baseline_rows = checksum(&pool, "baseline").await?;
    let per_event_rows = checksum(&pool, PER_EVENT_SCHEMA).await?;
    if framework_rows != baseline_rows || framework_rows != per_event_rows {
        return Err(format!(
            "the read models differ: runner {framework_rows:?}, baseline {baseline_rows:?}, per event {per_event_rows:?}"
        )
        .into());
    }
    println!(
        "all three read models hold the same {} rows",
        framework_rows.0
    );

    store.pool().close().await;
    db.drop_database().await?;
    Ok(())
}

/// Appends generated orders until there are at least [`EVENTS`] events: [`ORDERS_IN_FLIGHT`]
/// orders at a time, one event per order per round (so each stream's versions stay in order),
/// the appends of a round concurrent. Returns the number of events.
async fn seed(store: &PostgresStore) -> BenchResult<usize> {
    let mut appended = 0;
    let mut next_order = 0u64;
    let mut in_flight: Vec<(StreamId, std::vec::IntoIter<OrderEvent>)> = Vec::new();
    while appended < EVENTS || !in_flight.is_empty() {
        while appended < EVENTS && in_flight.len() < ORDERS_IN_FLIGHT {
            let id = StreamId::new("order", format!("bench-{next_order:06}"))?;
            in_flight.push((id, order_events_for(next_order).into_iter()));
            next_order += 1;
        }
        let mut round = Vec::with_capacity(in_flight.len());
        in_flight.retain_mut(|(id, events)| match events.next() {
            Some(event) => {
                round.push((id.clone(), event));
                true
            }
            None => false,
        });
        appended += round.len();
        try_join_all(round.into_iter().map(|(id, event)| async move {
            let new = NewEvent::from_domain(&event, EventMetadata::default())?;
            store.append(&id, ExpectedVersion::Any, vec![new]).await?;
            Ok::<_, BoxError>(())
        }))
        .await?;
    }
    Ok(appended)
}

/// The events of generated order `n`: placed, one to four items (sometimes a sku twice),
/// sometimes a line removed, then confirmed (and often shipped) or cancelled, or left open.
fn order_events_for(n: u64) -> Vec<OrderEvent> {
    const CATALOGUE: [(&str, u64); 5] = [
        ("COFFEE-1KG", 1_890),
        ("FILTERS-100", 450),
        ("MUG", 1_200),
        ("TEA", 700),
        ("KETTLE", 4_500),
    ];
    // A small deterministic mix of n's bits (splitmix64).
    let mut state = n;
    let mut roll = |sides: u64| {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % sides
    };
    let mut events = vec![OrderEvent::Placed {
        customer: format!("customer-{:02}", n % 50),
    }];
    let lines = 1 + roll(4);
    for _ in 0..lines {
        let (sku, price) = CATALOGUE[roll(CATALOGUE.len() as u64) as usize];
        events.push(OrderEvent::ItemAdded {
            sku: sku.to_owned(),
            quantity: 1 + roll(5) as u32,
            unit_price_cents: price,
        });
    }
    if lines > 1 && roll(3) == 0 {
        if let Some(OrderEvent::ItemAdded { sku, .. }) = events.get(1).cloned() {
            events.push(OrderEvent::ItemRemoved { sku });
        }
    }
    match roll(10) {
        0 => {}
        1 => events.push(OrderEvent::Cancelled {
            reason: "bench".into(),
        }),
        outcome => {
            events.push(OrderEvent::Confirmed);
            if outcome >= 5 {
                events.push(OrderEvent::Shipped {
                    tracking_number: format!("B-{n}"),
                });
            }
        }
    }
    events
}

/// The framework: a runner from an empty checkpoint until every order event is applied.
async fn catch_up<P: Projection>(store: &PostgresStore, projection: P) -> BenchResult<()> {
    let projection = Arc::new(projection);
    let runner =
        ProjectionRunner::with_shared(store.clone(), projection).with_options(RunnerOptions {
            feed: eventsource::FeedOptions::default().with_batch_size(BATCH),
            ..RunnerOptions::default()
        });
    runner.run_until_caught_up().await?;
    Ok(())
}

/// The baseline: the same reads with plain keyset paging by position, the same decoding into
/// order changes, and the same handler code writing into schema `baseline`, one transaction per
/// batch.
async fn raw_catch_up(pool: &PgPool) -> BenchResult<()> {
    type Row = (
        i64,
        String,
        i64,
        String,
        i32,
        serde_json::Value,
        chrono::DateTime<chrono::Utc>,
    );
    // A connection of its own (taken out of the pool): its search_path points at `baseline`.
    let mut conn = pool.acquire().await?.detach();
    conn.execute("CREATE SCHEMA baseline; SET search_path = baseline")
        .await?;
    conn.execute(include_str!(
        "../examples/order/sql/order_summary/setup.sql"
    ))
    .await?;
    let mut after = 0i64;
    loop {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT position, stream_id, version, event_type, schema_version, payload, recorded_at
             FROM eventsource.events
             WHERE position > $1 AND category = 'order' AND event_type = ANY($2)
             ORDER BY position LIMIT $3",
        )
        .bind(after)
        .bind(OrderEvent::EVENT_TYPES)
        .bind(BATCH as i64)
        .fetch_all(&mut conn)
        .await?;
        let Some(last) = rows.last() else {
            conn.close().await?;
            return Ok(());
        };
        after = last.0;
        let mut changes = Vec::with_capacity(rows.len());
        for (position, order_id, version, event_type, schema_version, payload, recorded_at) in rows
        {
            let event = OrderEvent::decode(&event_type, u32::try_from(schema_version)?, &payload)?;
            changes.push(OrderChange {
                event,
                event_id: uuid::Uuid::nil(),
                stream_id: StreamId::new("order", order_id)?,
                version: StreamVersion::try_from(version)?,
                position: FeedPosition::new(0, u64::try_from(position)?),
                metadata: EventMetadata::default(),
                recorded_at,
            });
        }
        let mut tx = conn.begin().await?;
        order_summary::apply(&mut tx, order_events::by_order(&changes)).await?;
        tx.commit().await?;
    }
}

const PER_EVENT_NAME: &str = "order_summary_per_event";
const PER_EVENT_SCHEMA: &str = "per_event";

/// The same read model with one statement per event: the alternative to folding a batch in
/// memory. Its table (same shape) lives in schema `per_event`.
struct PerEventSummary;

#[async_trait]
impl Projection for PerEventSummary {
    type Event = OrderChange;
    type Error = BoxError;

    fn name(&self) -> &str {
        PER_EVENT_NAME
    }

    fn tables(&self) -> &[&str] {
        &["order_summary"]
    }

    fn schema(&self) -> &str {
        PER_EVENT_SCHEMA
    }

    fn filter(&self) -> FeedFilter {
        order_events::order_filter()
    }

    async fn setup(&self, tx: &mut PgConnection) -> Result<(), BoxError> {
        tx.execute(include_str!(
            "../examples/order/sql/order_summary/setup.sql"
        ))
        .await?;
        Ok(())
    }

    async fn handle(&self, tx: &mut PgConnection, events: &[OrderChange]) -> Result<(), BoxError> {
        for change in events {
            let query = match &change.event {
                OrderEvent::Placed { customer } => per_event_query(PLACED, change).bind(customer),
                OrderEvent::ItemAdded {
                    sku,
                    quantity,
                    unit_price_cents,
                } => per_event_query(ITEM_ADDED, change)
                    .bind(sku)
                    .bind(i64::from(*quantity))
                    .bind(i64::try_from(*unit_price_cents)?),
                OrderEvent::ItemRemoved { sku } => per_event_query(ITEM_REMOVED, change).bind(sku),
                OrderEvent::Confirmed => per_event_query(STATUS, change).bind("confirmed"),
                OrderEvent::Shipped { .. } => per_event_query(STATUS, change).bind("shipped"),
                OrderEvent::Cancelled { .. } => per_event_query(STATUS, change).bind("cancelled"),
            };
            query.execute(&mut *tx).await?;
        }
        Ok(())
    }
}

/// `sql` with the event's order id, version and time bound as `$1`, `$2`, `$3`.
fn per_event_query<'q>(sql: &'q str, change: &'q OrderChange) -> Query<'q, Postgres, PgArguments> {
    sqlx::query(sql)
        .bind(change.stream_id.id())
        .bind(i64::from(change.version))
        .bind(change.recorded_at)
}

const PLACED: &str = "
    INSERT INTO order_summary (order_id, customer, status, item_count, total_cents, lines, version, updated_at)
    VALUES ($1, $4, 'open', 0, 0, '{}', $2, $3)";

const ITEM_ADDED: &str = "
    UPDATE order_summary SET
        item_count = item_count + $5,
        total_cents = total_cents + $5 * $6,
        lines = jsonb_set(lines, ARRAY[$4], jsonb_build_object(
            'quantity', COALESCE((lines -> $4 ->> 'quantity')::bigint, 0) + $5,
            'unit_price_cents', $6)),
        version = $2, updated_at = $3
    WHERE order_id = $1";

const ITEM_REMOVED: &str = "
    UPDATE order_summary SET
        item_count = item_count - COALESCE((lines -> $4 ->> 'quantity')::bigint, 0),
        total_cents = total_cents - COALESCE((lines -> $4 ->> 'quantity')::bigint
                                             * (lines -> $4 ->> 'unit_price_cents')::bigint, 0),
        lines = lines - $4,
        version = $2, updated_at = $3
    WHERE order_id = $1";

const STATUS: &str =
    "UPDATE order_summary SET status = $4, version = $2, updated_at = $3 WHERE order_id = $1";

/// Drops the three read models and the checkpoints of the two projections.
async fn reset(pool: &PgPool) -> BenchResult<()> {
    sqlx::raw_sql(&format!(
        "DROP TABLE public.order_summary;
         DROP SCHEMA baseline CASCADE;
         DROP SCHEMA {PER_EVENT_SCHEMA} CASCADE;
         DELETE FROM eventsource.checkpoints WHERE name IN ('{}', '{PER_EVENT_NAME}');",
        order_summary::NAME
    ))
    .execute(pool)
    .await?;
    Ok(())
}

/// Rows of `schema`.order_summary and a digest of their content.
async fn checksum(pool: &PgPool, schema: &str) -> BenchResult<(i64, String)> {
    let (rows, digest): (i64, Option<String>) = sqlx::query_as(&format!(
        "SELECT count(*), md5(string_agg(to_jsonb(t)::text, '|' ORDER BY order_id)) FROM \"{schema}\".order_summary t"
    ))
    .fetch_one(pool)
    .await?;
    Ok((rows, digest.unwrap_or_default()))
}

async fn time(work: impl std::future::Future<Output = BenchResult<()>>) -> BenchResult<Duration> {
    let start = Instant::now();
    work.await?;
    Ok(start.elapsed())
}

fn report(what: &str, events: usize, framework: Duration, baseline: Duration) {
    let rate = |d: Duration| events as f64 / d.as_secs_f64();
    println!(
        "{what:<26} {:>8.0} events/s   baseline (raw sqlx, batched) {:>8.0} events/s   ratio {:.2}x",
        rate(framework),
        rate(baseline),
        rate(framework) / rate(baseline)
    );
}
