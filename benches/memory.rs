//! Peak memory while replaying the feed: a subscription over 300 events of 1 MiB, and over
//! 1,000,000 small events, beside a raw sqlx baseline that streams the same rows one at a time.
//!
//! ```text
//! DATABASE_URL=postgres://... cargo bench --bench memory            # both
//! DATABASE_URL=postgres://... cargo bench --bench memory -- large   # 300 x 1 MiB only
//! ```
//!
//! Peak resident memory is read from `/proc/self/status` (`VmHWM`) after resetting it through
//! `/proc/self/clear_refs`, so each figure covers one replay alone. The baseline keeps one
//! decoded row at a time, the floor of any reader; the subscription keeps one batch, bounded by
//! its byte budget (16 MiB by default) and its event count (500). Linux only.

use std::time::Instant;

use eventsource::postgres::testing::TestDatabase;
use eventsource::postgres::PostgresStore;
use eventsource::{
    EventAppender, EventMetadata, ExpectedVersion, FeedOptions, FeedPosition, NewEvent, StreamId,
    Subscribe,
};
use futures::TryStreamExt;
use serde_json::json;
use sqlx::types::Json;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Resident memory now and at its peak since the last reset, in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak to the current resident memory.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Appends `count` events whose payload carries `payload_bytes` bytes, `per_append` at a time.
async fn seed(
    store: &PostgresStore,
    count: usize,
    payload_bytes: usize,
    per_append: usize,
) -> Result<(), BoxError> {
    let blob = "x".repeat(payload_bytes);
    let mut n = 0;
    while n < count {
        let stream = StreamId::new("memory", format!("s-{}", n % 100))?;
        let events = (n..count.min(n + per_append))
            .map(|i| {
                NewEvent::new(
                    "Filled",
                    1,
                    json!({ "n": i, "blob": blob }),
                    EventMetadata::default(),
                )
            })
            .collect::<Vec<_>>();
        n += events.len();
        store.append(&stream, ExpectedVersion::Any, events).await?;
    }
    Ok(())
}

/// Replays `count` events through a subscription; returns the peak resident memory above
/// the resident memory before it, and the time it took.
async fn subscription_peak(store: &PostgresStore, count: usize) -> Result<(u64, f64), BoxError> {
    reset_peak();
    let (before, _) = rss();
    let started = Instant::now();
    let mut subscription = store.subscribe(FeedPosition::START, FeedOptions::default());
    for _ in 0..count {
        let event = subscription
            .try_next()
            .await?
            .ok_or("the subscription ended")?;
        std::hint::black_box(&event);
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(subscription);
    let (_, peak) = rss();
    Ok((peak.saturating_sub(before), elapsed))
}

/// Streams the same rows with plain sqlx, one decoded row at a time.
async fn baseline_peak(store: &PostgresStore, count: usize) -> Result<(u64, f64), BoxError> {
    reset_peak();
    let (before, _) = rss();
    let started = Instant::now();
    let mut rows = sqlx::query_as::<_, (i64, Json<serde_json::Value>, Json<serde_json::Value>)>(
        "SELECT position, payload, metadata FROM eventsource.events ORDER BY transaction_id, position",
    )
    .fetch(store.pool());
    let mut seen = 0;
    while let Some(row) = rows.try_next().await? {
        std::hint::black_box(&row);
        seen += 1;
    }
    if seen != count {
        return Err(format!("the baseline read {seen} rows, expected {count}").into());
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(rows);
    let (_, peak) = rss();
    Ok((peak.saturating_sub(before), elapsed))
}

async fn measure(
    name: &str,
    count: usize,
    payload_bytes: usize,
    per_append: usize,
) -> Result<(), BoxError> {
    let db = TestDatabase::create().await?;
    let store = db.store().await?;
    let started = Instant::now();
    seed(&store, count, payload_bytes, per_append).await?;
    println!(
        "{name}: seeded {count} events of {payload_bytes} payload bytes in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Alternate, and take each side's larger peak over two rounds.
    let (mut ours, mut raw) = ((0, 0.0), (0, 0.0));
    for _ in 0..2 {
        let s = subscription_peak(&store, count).await?;
        let b = baseline_peak(&store, count).await?;
        ours = (ours.0.max(s.0), s.1);
        raw = (raw.0.max(b.0), b.1);
    }
    println!(
        "{name}: peak RSS above the start of the replay: subscription {:.1} MiB ({:.1} s), raw sqlx stream {:.1} MiB ({:.1} s); ratio {:.2}x; process RSS now {:.1} MiB",
        mib(ours.0),
        ours.1,
        mib(raw.0),
        raw.1,
        ours.0 as f64 / raw.0.max(1) as f64,
        mib(rss().0),
    );
    store.close().await;
    db.drop_database().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let which = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if which.as_deref() != Some("small") {
        // Just under the default payload limit of 1 MiB, 10 to an append (under 32 MiB).
        measure("300 x 1 MiB", 300, 1024 * 1024 - 100, 10).await?;
    }
    if which.as_deref() != Some("large") {
        measure("1,000,000 small", 1_000_000, 20, 1_000).await?;
    }
    Ok(())
}
