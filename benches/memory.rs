//! Peak memory while replaying the feed: a subscription over 300 events of 1 MiB, and over
//! 1,000,000 small events, beside a raw sqlx baseline that streams the same rows one at a time.
//!
//! ```text
//! DATABASE_URL=postgres://... cargo bench --bench memory            # both
//! DATABASE_URL=postgres://... cargo bench --bench memory -- large   # 300 x 1 MiB only
//! ```
//!
//! Each replay runs in a process of its own (this binary, started again with `replay ...`), and
//! reports its peak resident memory from `/proc/self/status` (`VmHWM`), so nothing that seeding
//! allocated counts. The baseline keeps one decoded row at a time, the floor of any reader; the
//! subscription keeps one batch, bounded by its byte budget (16 MiB by default) and its event
//! count (500). Linux only.

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

/// Replays `count` events through a subscription (in this process); returns the time it took.
async fn replay_subscription(store: &PostgresStore, count: usize) -> Result<f64, BoxError> {
    let started = Instant::now();
    let mut subscription = store.subscribe(FeedPosition::START, FeedOptions::default());
    for _ in 0..count {
        let event = subscription
            .try_next()
            .await?
            .ok_or("the subscription ended")?;
        std::hint::black_box(&event);
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Streams the same rows with plain sqlx, one decoded row at a time.
async fn replay_raw(store: &PostgresStore, count: usize) -> Result<f64, BoxError> {
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
    Ok(started.elapsed().as_secs_f64())
}

/// The child process: replays the database at `url` one way and prints its peak memory and time.
async fn child(kind: &str, url: &str, count: usize) -> Result<(), BoxError> {
    let store = PostgresStore::connect(url).await?;
    let seconds = match kind {
        "subscription" => replay_subscription(&store, count).await?,
        "raw" => replay_raw(&store, count).await?,
        other => return Err(format!("unknown replay `{other}`").into()),
    };
    store.close().await;
    println!("{} {seconds}", rss().1);
    Ok(())
}

/// Runs one replay in a child process; returns its peak resident memory and time.
fn replay_in_child(kind: &str, url: &str, count: usize) -> Result<(u64, f64), BoxError> {
    let output = std::process::Command::new(std::env::current_exe()?)
        .args(["replay", kind, url, &count.to_string()])
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "the {kind} replay failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let text = String::from_utf8(output.stdout)?;
    let mut fields = text.split_whitespace();
    let peak = fields.next().ok_or("no peak")?.parse()?;
    let seconds = fields.next().ok_or("no time")?.parse()?;
    Ok((peak, seconds))
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
    let server = eventsource::postgres::testing::database_url();
    let url = match server.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{}", db.name()),
        None => return Err(format!("cannot name a database in {server}").into()),
    };
    // Alternate, twice each; the larger peak of each side counts.
    let (mut ours, mut raw) = ((0, 0.0), (0, 0.0));
    for _ in 0..2 {
        let s = replay_in_child("subscription", &url, count)?;
        let b = replay_in_child("raw", &url, count)?;
        ours = (ours.0.max(s.0), s.1);
        raw = (raw.0.max(b.0), b.1);
    }
    println!(
        "{name}: peak RSS of the replaying process: subscription {:.1} MiB ({:.1} s), raw sqlx stream {:.1} MiB ({:.1} s); ratio {:.2}x",
        mib(ours.0),
        ours.1,
        mib(raw.0),
        raw.1,
        ours.0 as f64 / raw.0.max(1) as f64,
    );
    store.close().await;
    db.drop_database().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("replay") {
        let [_, kind, url, count] = args.as_slice() else {
            return Err("usage: memory replay <subscription|raw> <url> <count>".into());
        };
        return child(kind, url, count.parse()?).await;
    }
    let which = args
        .iter()
        .find(|a| !a.starts_with('-'))
        .map(String::as_str);
    if which != Some("small") {
        // Just under the default payload limit of 1 MiB, 10 to an append (under 32 MiB).
        measure("300 x 1 MiB", 300, 1024 * 1024 - 100, 10).await?;
    }
    if which != Some("large") {
        measure("1,000,000 small", 1_000_000, 20, 1_000).await?;
    }
    Ok(())
}
