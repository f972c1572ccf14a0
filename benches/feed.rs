//! Append, feed-read and live-delivery benchmarks against a raw sqlx baseline in the same run.
//!
//! ```text
//! DATABASE_URL=postgres://... cargo bench --bench feed
//! ```
//!
//! Reads and deliveries are measured once per feed horizon (`FeedHorizon::Cluster`, then
//! `FeedHorizon::Writers`, over the same events), so the cost of computing the writers'
//! horizon shows beside the server-wide one; `EVENTSOURCE_FEED_HORIZONS=writers` (or `cluster`)
//! measures one only.
//!
//! Each figure is reported beside the same rows handled with plain sqlx on the same server, so
//! the ratio (not the absolute number) is what to compare across machines.
//!
//! What each baseline does, and what it leaves out that the framework does:
//!
//! - **append** (one writer, then 16 concurrent writers): one `INSERT ... SELECT FROM UNNEST` of the same rows (same columns, the same
//!   JSON text) into a plain table with the same unique keys, versions from a `MAX` subquery.
//!   It checks no expected version, has no typed conflicts or idempotent retries, stores no
//!   transaction id, keeps no feed index, notifies nobody and returns no positions.
//! - **read**: keyset paging by position over that table, 1,000 rows a page, decoding the same
//!   columns into a tuple (payload and metadata as `serde_json::Value`). It ignores the
//!   transaction horizon (so it could skip late commits), and neither checks stream ids nor
//!   decodes metadata into its type.
//! - **append -> subscriber**: one statement that inserts the row and notifies (one commit, as
//!   the framework's trigger does), a `PgListener` that receives the notification, then a keyset
//!   read of the new rows: the floor of any notification-driven feed that delivers rows.
//!
//! The framework and the baseline alternate in rounds (which one goes first alternates too), so
//! load that comes and goes on a shared server hits both alike. Ratios are framework / baseline
//! over all rounds; the spread of the per-round ratios is printed beside them, so a noisy run
//! shows as one. Reads are measured in the steady state: tables analyzed, one untimed read each.

use std::time::{Duration, Instant};

use eventsource::postgres::testing::TestDatabase;
use eventsource::postgres::{FeedHorizon, PostgresStore};
use eventsource::store::read_feed;
use eventsource::{
    BatchSize, EventAppender, EventMetadata, ExpectedVersion, FeedFilter, FeedOptions,
    FeedPosition, NewEvent, StreamId, Subscribe, Subscription,
};
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use sqlx::postgres::PgListener;
use sqlx::PgPool;

/// Rounds per throughput comparison.
const ROUNDS: usize = 10;
/// Appends of one event per round (each side).
const SINGLE_APPENDS: usize = 200;
/// Concurrent writers, and appends of one event per round by each (each side).
const WRITERS: usize = 16;
const APPENDS_PER_WRITER: usize = 25;
/// Appends of `BATCH` events per round (each side).
const BATCH_APPENDS: usize = 20;
const BATCH: usize = 100;
/// Whole-feed reads (each side), after one untimed read of each.
const READ_ROUNDS: usize = 5;
/// Deliveries measured (each side), alternating.
const LATENCY_SAMPLES: usize = 1_000;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn event(n: usize) -> NewEvent {
    NewEvent::new(
        "OrderPlaced",
        1,
        json!({ "customer": format!("customer-{}", n % 97), "n": n }),
        EventMetadata::default(),
    )
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let db = TestDatabase::create().await?;
    let store = db.store().await?;
    let pool = store.pool().clone();
    sqlx::raw_sql(BASELINE_TABLE).execute(&pool).await?;
    println!("eventsource feed benchmarks (database {})\n", db.name());

    // Appends of one event: framework vs a plain INSERT of the same row.
    let mut times = Times::default();
    for round in 0..ROUNDS {
        for side in Side::order(round) {
            let start = Instant::now();
            for i in 0..SINGLE_APPENDS {
                let n = round * SINGLE_APPENDS + i;
                let stream = format!("single-{}", n % 200);
                append(side, &store, &stream, ExpectedVersion::Any, vec![event(n)]).await?;
            }
            times.add(side, start.elapsed());
        }
    }
    times.report("append 1 event", SINGLE_APPENDS);

    // The same single-event appends from concurrent writers, each to streams of its own.
    let mut times = Times::default();
    for round in 0..ROUNDS {
        for side in Side::order(round) {
            let start = Instant::now();
            let writers = (0..WRITERS).map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..APPENDS_PER_WRITER {
                        let n = (round * WRITERS + w) * APPENDS_PER_WRITER + i;
                        let stream = format!("concurrent-{w}-{}", n % 50);
                        append(side, &store, &stream, ExpectedVersion::Any, vec![event(n)]).await?;
                    }
                    Ok::<_, BoxError>(())
                })
            });
            for writer in futures::future::join_all(writers).await {
                writer??;
            }
            times.add(side, start.elapsed());
        }
    }
    times.report(
        &format!("append 1 event x{WRITERS}"),
        WRITERS * APPENDS_PER_WRITER,
    );

    // Appends of 100 events in one call, each to a new stream.
    let mut times = Times::default();
    for round in 0..ROUNDS {
        for side in Side::order(round) {
            let start = Instant::now();
            for i in 0..BATCH_APPENDS {
                let stream = format!("batch-{}", round * BATCH_APPENDS + i);
                let events: Vec<NewEvent> = (0..BATCH).map(event).collect();
                append(side, &store, &stream, ExpectedVersion::NoStream, events).await?;
            }
            times.add(side, start.elapsed());
        }
    }
    times.report("append 100 events", BATCH_APPENDS * BATCH);

    // Reading the whole feed in batches of 1,000: framework (decoded RecordedEvents) vs plain
    // keyset paging over the baseline table, decoding the same columns. Both tables are
    // analyzed first, as autovacuum would do within a minute: without statistics the planner
    // may sort each batch's candidates instead of walking the feed index, and the figure would
    // depend on when autovacuum happens to run. Then one untimed read of each, so neither pays
    // alone for the first visit of fresh rows (hint bits, cache).
    sqlx::query("ANALYZE eventsource.events, baseline_events")
        .execute(&pool)
        .await?;
    let total = ROUNDS * (SINGLE_APPENDS + WRITERS * APPENDS_PER_WRITER + BATCH_APPENDS * BATCH);
    assert_eq!(framework_read_all(&store).await?, total);
    assert_eq!(raw_read_all(&pool).await?, total);
    let horizons = horizons()?;
    for &horizon in &horizons {
        let store = store.clone().with_feed_horizon(horizon);
        let mut times = Times::default();
        for round in 0..READ_ROUNDS {
            for side in Side::order(round) {
                let start = Instant::now();
                let read = match side {
                    Side::Framework => framework_read_all(&store).await?,
                    Side::Baseline => raw_read_all(&pool).await?,
                };
                times.add(side, start.elapsed());
                assert_eq!(read, total);
            }
        }
        times.report(&format!("read ({horizon:?})"), total);
    }

    // Live delivery latency: append -> subscriber, vs INSERT + NOTIFY -> LISTEN -> read.
    for &horizon in &horizons {
        let store = store.clone().with_feed_horizon(horizon);
        let (framework, baseline) = delivery_latency(&store, &pool).await?;
        println!(
            "{:<22} p50 {:>6.2} ms  p99 {:>6.2} ms   baseline (INSERT+NOTIFY -> LISTEN -> SELECT) p50 {:>6.2} ms  p99 {:>6.2} ms   ratio p50 {:.2}x",
            format!("deliver ({horizon:?})"),
            ms(framework.0),
            ms(framework.1),
            ms(baseline.0),
            ms(baseline.1),
            framework.0.as_secs_f64() / baseline.0.as_secs_f64()
        );
    }

    store.pool().close().await;
    db.drop_database().await?;
    Ok(())
}

/// The feed horizons to measure reads and deliveries with, in order: `EVENTSOURCE_FEED_HORIZONS`
/// (a comma-separated list of `cluster` and `writers`), by default both.
fn horizons() -> Result<Vec<FeedHorizon>, BoxError> {
    let list =
        std::env::var("EVENTSOURCE_FEED_HORIZONS").unwrap_or_else(|_| "cluster,writers".to_owned());
    list.split(',')
        .map(|name| match name.trim() {
            "cluster" => Ok(FeedHorizon::Cluster),
            "writers" => Ok(FeedHorizon::Writers),
            other => Err(format!(
                "EVENTSOURCE_FEED_HORIZONS: unknown horizon `{other}` (use cluster, writers)"
            )
            .into()),
        })
        .collect()
}

/// Which side of a comparison runs.
#[derive(Debug, Clone, Copy)]
enum Side {
    Framework,
    Baseline,
}

impl Side {
    /// Round `round`'s order: the side that runs first alternates.
    fn order(round: usize) -> [Side; 2] {
        if round % 2 == 0 {
            [Side::Framework, Side::Baseline]
        } else {
            [Side::Baseline, Side::Framework]
        }
    }
}

/// Time per round of each side.
#[derive(Default)]
struct Times {
    framework: Vec<Duration>,
    baseline: Vec<Duration>,
}

impl Times {
    fn add(&mut self, side: Side, elapsed: Duration) {
        match side {
            Side::Framework => self.framework.push(elapsed),
            Side::Baseline => self.baseline.push(elapsed),
        }
    }

    /// Prints both rates over all rounds, their ratio, and the range of per-round ratios.
    fn report(&self, what: &str, events_per_round: usize) {
        let total = |times: &[Duration]| times.iter().sum::<Duration>().as_secs_f64();
        let rate = |times: &[Duration]| (events_per_round * times.len()) as f64 / total(times);
        let mut per_round: Vec<f64> = self
            .framework
            .iter()
            .zip(&self.baseline)
            .map(|(f, b)| b.as_secs_f64() / f.as_secs_f64())
            .collect();
        per_round.sort_by(f64::total_cmp);
        println!(
            "{what:<22} {:>10.0} events/s   baseline (raw sqlx) {:>10.0} events/s   ratio {:.2}x  (rounds {:.2}x..{:.2}x)",
            rate(&self.framework),
            rate(&self.baseline),
            total(&self.baseline) / total(&self.framework),
            per_round.first().copied().unwrap_or(f64::NAN),
            per_round.last().copied().unwrap_or(f64::NAN),
        );
    }
}

const BASELINE_TABLE: &str = "
CREATE TABLE baseline_events (
    position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id uuid NOT NULL UNIQUE,
    category text NOT NULL,
    stream_id text NOT NULL,
    version bigint NOT NULL,
    event_type text NOT NULL,
    schema_version int NOT NULL,
    payload jsonb NOT NULL,
    metadata jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (category, stream_id, version)
)";

/// The baseline's insert of one stream's events ($1 stream id, then ids, types, payloads and
/// metadata as arrays).
const RAW_INSERT: &str = "
INSERT INTO baseline_events (event_id, category, stream_id, version, event_type, schema_version, payload, metadata)
SELECT e.id, 'order', $1,
       (SELECT COALESCE(MAX(version), 0) FROM baseline_events WHERE category = 'order' AND stream_id = $1) + e.n,
       e.t, 1, e.p::jsonb, e.m::jsonb
FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS e(id, t, p, m, n)";

/// The same insert, notifying `baseline_channel` in the same statement (so at the same commit).
const RAW_INSERT_NOTIFY: &str = "
WITH inserted AS (
    INSERT INTO baseline_events (event_id, category, stream_id, version, event_type, schema_version, payload, metadata)
    SELECT e.id, 'order', $1,
           (SELECT COALESCE(MAX(version), 0) FROM baseline_events WHERE category = 'order' AND stream_id = $1) + e.n,
           e.t, 1, e.p::jsonb, e.m::jsonb
    FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS e(id, t, p, m, n)
    RETURNING 1
)
SELECT pg_notify('baseline_channel', '')";

/// Appends `events` to stream `stream` of category `order`: through the framework with
/// `expected`, or with the baseline's plain insert into its own table.
async fn append(
    side: Side,
    store: &PostgresStore,
    stream: &str,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> Result<(), BoxError> {
    match side {
        Side::Framework => {
            let stream = StreamId::new("order", stream)?;
            store.append(&stream, expected, events).await?;
        }
        Side::Baseline => raw_insert(store.pool(), stream, &events).await?,
    }
    Ok(())
}

/// The same rows as an append, inserted with plain sqlx.
async fn raw_insert(pool: &PgPool, stream: &str, events: &[NewEvent]) -> Result<(), BoxError> {
    raw_insert_with(pool, RAW_INSERT, stream, events).await
}

/// Runs `sql` (one of the raw inserts) for `events`, JSON encoded as the framework encodes them.
async fn raw_insert_with(
    pool: &PgPool,
    sql: &'static str,
    stream: &str,
    events: &[NewEvent],
) -> Result<(), BoxError> {
    let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    let payloads: Vec<_> = events.iter().map(|e| e.payload.to_string()).collect();
    let metadata = events
        .iter()
        .map(|e| serde_json::to_string(&e.metadata))
        .collect::<Result<Vec<_>, _>>()?;
    sqlx::query(sql)
        .bind(stream)
        .bind(&ids)
        .bind(&types)
        .bind(&payloads)
        .bind(&metadata)
        .execute(pool)
        .await?;
    Ok(())
}

/// The whole feed through the framework, in batches of 1,000.
async fn framework_read_all(store: &PostgresStore) -> Result<usize, BoxError> {
    Ok(read_feed(
        store,
        FeedPosition::START,
        BatchSize::events(1000),
        FeedFilter::all(),
    )
    .try_fold(0, |n, _| async move { Ok(n + 1) })
    .await?)
}

/// The columns the baseline decodes, in its table's order.
type RawRow = (
    i64,
    uuid::Uuid,
    String,
    String,
    i64,
    String,
    i32,
    sqlx::types::Json<serde_json::Value>,
    sqlx::types::Json<serde_json::Value>,
    chrono::DateTime<chrono::Utc>,
);

/// One page of the baseline table after `after`, decoding every column.
async fn raw_page(pool: &PgPool, after: i64, limit: i64) -> Result<Vec<RawRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT position, event_id, category, stream_id, version, event_type, schema_version, payload, metadata, recorded_at
         FROM baseline_events WHERE position > $1 ORDER BY position LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Keyset paging over the baseline table, 1,000 rows a page.
async fn raw_read_all(pool: &PgPool) -> Result<usize, BoxError> {
    let mut after = 0i64;
    let mut count = 0;
    loop {
        let rows = raw_page(pool, after, 1000).await?;
        let Some(last) = rows.last() else {
            return Ok(count);
        };
        after = last.0;
        count += rows.len();
    }
}

/// Appends one event at a time until a live reader has it, alternating the framework
/// (append -> subscription) and the baseline (INSERT + NOTIFY -> PgListener -> SELECT).
/// Returns (p50, p99) of each.
async fn delivery_latency(
    store: &PostgresStore,
    pool: &PgPool,
) -> Result<((Duration, Duration), (Duration, Duration)), BoxError> {
    let stream = StreamId::new("latency", "1")?;
    let mut subscription = caught_up_subscription(store).await?;
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen("baseline_channel").await?;
    let mut after: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM baseline_events")
            .fetch_one(pool)
            .await?;

    let mut framework = Vec::with_capacity(LATENCY_SAMPLES);
    let mut baseline = Vec::with_capacity(LATENCY_SAMPLES);
    for n in 0..LATENCY_SAMPLES {
        for side in Side::order(n) {
            let start = Instant::now();
            match side {
                Side::Framework => {
                    store
                        .append(&stream, ExpectedVersion::Any, vec![event(n)])
                        .await?;
                    subscription.next().await.ok_or("subscription ended")??;
                    framework.push(start.elapsed());
                }
                Side::Baseline => {
                    raw_insert_with(pool, RAW_INSERT_NOTIFY, "latency", &[event(n)]).await?;
                    listener.recv().await?;
                    let rows = raw_page(pool, after, 500).await?;
                    after = rows.last().ok_or("notified, but no new row")?.0;
                    baseline.push(start.elapsed());
                }
            }
        }
    }
    Ok((percentiles(framework), percentiles(baseline)))
}

/// A subscription that has delivered everything appended so far.
async fn caught_up_subscription(store: &PostgresStore) -> Result<Subscription, BoxError> {
    let mut subscription = store.subscribe(FeedPosition::START, FeedOptions::default());
    let head = read_feed(
        store,
        FeedPosition::START,
        BatchSize::events(1000),
        FeedFilter::all(),
    )
    .try_fold(FeedPosition::START, |_, e| async move { Ok(e.position) })
    .await?;
    while subscription.position() < head {
        subscription.next().await.ok_or("subscription ended")??;
    }
    Ok(subscription)
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.99))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
