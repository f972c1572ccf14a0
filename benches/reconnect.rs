//! How long a subscription takes to deliver again after its PostgreSQL server restarts.
//!
//! ```text
//! cargo bench --bench reconnect                        # restarts the installed cluster (pg_ctlcluster)
//! EVENTSOURCE_RESTART="pg_ctl restart -D ... -m fast" cargo bench --bench reconnect
//! ```
//!
//! **This restarts the server**: every other connection to it is cut. A subscription follows a
//! stream that a writer appends to every 10 ms (retrying through the outage); the server is
//! restarted with `-m fast`, `-m immediate` and by killing its postmaster (`kill -9`, then
//! started again); each time the bench reports how long after the server accepted connections
//! again the subscription delivered the next event, and checks that every appended event was
//! delivered once, in order.

use std::time::{Duration, Instant};

use eventsource::postgres::testing::TestDatabase;
use eventsource::postgres::PostgresStore;
use eventsource::{
    EventAppender, EventMetadata, ExpectedVersion, FeedOptions, FeedPosition, NewEvent, StreamId,
    Subscribe,
};
use futures::TryStreamExt;
use serde_json::json;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The installed cluster's version directory under /etc/postgresql.
fn cluster_version() -> Result<String, BoxError> {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    versions.sort();
    versions
        .pop()
        .ok_or_else(|| "no cluster under /etc/postgresql".into())
}

fn run(command: &str) -> Result<(), BoxError> {
    let status = std::process::Command::new("sh")
        .args(["-c", command])
        .status()?;
    if !status.success() {
        return Err(format!("`{command}` failed: {status}").into());
    }
    Ok(())
}

/// Restarts the server one way; returns when it has been told to start again.
fn restart(how: &str) -> Result<(), BoxError> {
    if let Ok(command) = std::env::var("EVENTSOURCE_RESTART") {
        return run(&command);
    }
    let version = cluster_version()?;
    let ctl = format!("pg_ctlcluster --skip-systemctl-redirect {version} main");
    match how {
        "fast" => run(&format!("{ctl} restart -m fast")),
        "immediate" => run(&format!("{ctl} restart -m immediate")),
        _ => {
            let pid_file = format!("/var/run/postgresql/{version}-main.pid");
            // The postmaster and every backend die at once; the stale pid and socket lock
            // files are removed before the start.
            run(&format!(
                "kill -9 $(head -1 {pid_file}); pkill -9 -f '^postgres: {version}/main'; sleep 1; \
                 rm -f {pid_file} /var/run/postgresql/.s.PGSQL.5432.lock; {ctl} start"
            ))
        }
    }
}

/// Waits until a new connection to `url` succeeds; returns when.
async fn server_back(url: &str) -> Instant {
    loop {
        if PostgresStore::connect(url).await.is_ok() {
            return Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let db = TestDatabase::create().await?;
    db.store().await?.close().await;
    let server = eventsource::postgres::testing::database_url();
    let url = match server.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{}", db.name()),
        None => return Err(format!("cannot name a database in {server}").into()),
    };
    let store = PostgresStore::connect(&url).await?;
    let writer = PostgresStore::connect(&url).await?;
    let stream = StreamId::new("reconnect", "1")?;
    let appended = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    // When each event was appended (acknowledged), by its number.
    let append_times = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let writing = tokio::spawn({
        let stream = stream.clone();
        let appended = appended.clone();
        let append_times = append_times.clone();
        async move {
            let mut n = 0u64;
            loop {
                let event = NewEvent::new("Ticked", 1, json!({ "n": n }), EventMetadata::default());
                if writer
                    .append(&stream, ExpectedVersion::Any, vec![event])
                    .await
                    .is_ok()
                {
                    n += 1;
                    append_times
                        .lock()
                        .map(|mut times| times.push(Instant::now()))
                        .ok();
                    appended.store(n, std::sync::atomic::Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let mut subscription = store.subscribe(FeedPosition::START, FeedOptions::default());
    let mut expected = 0u64;
    for how in ["fast", "immediate", "kill -9"] {
        // Steady state first.
        for _ in 0..20 {
            let event = subscription.try_next().await?.ok_or("ended")?;
            if event.payload["n"].as_u64() != Some(expected) {
                return Err(format!("expected event {expected}, got {}", event.payload).into());
            }
            expected += 1;
        }
        let restarting = tokio::task::spawn_blocking(move || restart(how));
        let back = server_back(&url);
        let back = tokio::time::timeout(Duration::from_secs(120), back).await?;
        restarting.await??;
        // The first event appended after the server was back (by a writer that itself rides
        // out the outage), delivered: every event before it comes first, once and in order.
        let first_new = appended.load(std::sync::atomic::Ordering::SeqCst);
        let (first_after, since_append) = loop {
            let event = subscription.try_next().await?.ok_or("ended")?;
            if event.payload["n"].as_u64() != Some(expected) {
                return Err(format!("expected event {expected}, got {}", event.payload).into());
            }
            expected += 1;
            if expected > first_new {
                let appended_at = append_times
                    .lock()
                    .ok()
                    .and_then(|times| times.get(first_new as usize).copied())
                    .ok_or("no append time")?;
                break (back.elapsed(), appended_at.elapsed());
            }
        };
        println!(
            "restart ({how}): the first event appended after the server accepted connections again was delivered {:.0} ms after that, {:.0} ms after its append; {} outage(s) recovered; every event so far delivered once, in order",
            first_after.as_secs_f64() * 1000.0,
            since_append.as_secs_f64() * 1000.0,
            subscription.status().outages_recovered
        );
    }
    writing.abort();
    drop(subscription);
    store.close().await;
    db.drop_database().await?;
    Ok(())
}
