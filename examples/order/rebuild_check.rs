//! `cargo run --example order -- rebuild [--seed N]`: rebuilds both read models from the start
//! of the feed and checks that the rebuilt tables hold exactly what the live ones held.
//!
//! 1. (with `--seed N`) appends N generated orders;
//! 2. brings the live read models up to date and snapshots every row of their tables;
//! 3. rebuilds both at once with `rebuild` (into shadow tables, swapped in at the end), with a
//!    progress bar each;
//! 4. compares the rebuilt tables with the snapshot.

use std::collections::BTreeSet;
use std::error::Error;
use std::time::{Duration, Instant};

use eventsource::postgres::projection::{rebuild, Projection, ProjectionError, RebuildOptions};
use eventsource::postgres::PostgresStore;
use eventsource::FeedPosition;
use indicatif::MultiProgress;

use crate::progress;
use crate::read_models::ReadModels;
use crate::seed::seed;

/// Every row of each of a projection's tables (as JSON text, sorted), by table.
type Snapshot = Vec<(String, Vec<String>)>;

/// Differing rows shown per table when a comparison fails.
const SHOWN_DIFFERENCES: usize = 3;

/// Runs the check; an error when the rebuilt read models differ from the live ones.
pub async fn run(store: &PostgresStore, seed_orders: usize) -> Result<(), Box<dyn Error>> {
    if seed_orders > 0 {
        println!("== Seeding {seed_orders} orders");
        seed(store, seed_orders).await?;
    }
    let models = ReadModels::new()?;

    println!("== Bringing the live read models up to date");
    let (summary_live_at, stats_live_at) = models.catch_up(store).await?;
    let summary_live = snapshot(store, &*models.order_summary).await?;
    let stats_live = snapshot(store, &*models.customer_stats).await?;
    for (table, rows) in summary_live.iter().chain(&stats_live) {
        println!("   {table}: {} rows", rows.len());
    }

    println!("== Rebuilding both from the start of the feed");
    let bars = MultiProgress::new();
    let (summary, stats) = tokio::try_join!(
        rebuild_with_bar(store, &*models.order_summary, &bars),
        rebuild_with_bar(store, &*models.customer_stats, &bars),
    )?;
    for (name, rebuilt) in [
        (models.order_summary.name(), &summary),
        (models.customer_stats.name(), &stats),
    ] {
        println!(
            "   {name}: replayed {} events in {:.2} s",
            rebuilt.events,
            rebuilt.took.as_secs_f64()
        );
    }

    println!("== Comparing the rebuilt tables with the live ones");
    let summary_equal = check(
        store,
        &*models.order_summary,
        &summary_live,
        summary_live_at,
        &summary,
    )
    .await?;
    let stats_equal = check(
        store,
        &*models.customer_stats,
        &stats_live,
        stats_live_at,
        &stats,
    )
    .await?;
    if !(summary_equal && stats_equal) {
        return Err("the rebuilt read models differ from the live ones".into());
    }
    println!("The rebuilt read models are equal to the live ones.");
    Ok(())
}

/// What one rebuild did.
struct Rebuilt {
    position: FeedPosition,
    events: u64,
    took: Duration,
}

/// Rebuilds `projection` from scratch, showing its progress (events done of the events it
/// wants) on a bar of `bars`.
async fn rebuild_with_bar<P: Projection>(
    store: &PostgresStore,
    projection: &P,
    bars: &MultiProgress,
) -> Result<Rebuilt, ProjectionError> {
    let bar = bars.add(progress::bar(projection.name(), "events", 0));
    let started = Instant::now();
    let mut events = 0;
    let options = RebuildOptions {
        fresh: true,
        ..RebuildOptions::default()
    };
    let position = rebuild(store, projection, options, |progress| {
        bar.set_length(progress.total);
        bar.set_position(progress.done);
        events = progress.done;
    })
    .await;
    bar.finish();
    Ok(Rebuilt {
        position: position?,
        events,
        took: started.elapsed(),
    })
}

/// Compares the rebuilt tables of `projection` with the snapshot `live` taken at `live_at`;
/// prints the outcome, returns whether they are equal.
async fn check<P: Projection>(
    store: &PostgresStore,
    projection: &P,
    live: &Snapshot,
    live_at: FeedPosition,
    rebuilt: &Rebuilt,
) -> Result<bool, sqlx::Error> {
    if rebuilt.position != live_at {
        println!(
            "   {}: the live model was at {live_at} but the rebuild went on to {} \
             (events were appended meanwhile), so rows may differ",
            projection.name(),
            rebuilt.position
        );
    }
    Ok(compare(live, &snapshot(store, projection).await?))
}

/// Every row of each of `projection`'s tables, as JSON text, sorted.
async fn snapshot<P: Projection>(
    store: &PostgresStore,
    projection: &P,
) -> Result<Snapshot, sqlx::Error> {
    let mut tables = Vec::new();
    for table in projection.tables() {
        // Identifiers cannot be bound as parameters; the runner has checked these are plain
        // identifiers (letters, digits, `_`) before creating them.
        let query = format!(
            "SELECT to_jsonb(t)::text AS row FROM \"{}\".\"{table}\" t ORDER BY row",
            projection.schema()
        );
        let rows: Vec<String> = sqlx::query_scalar(&query).fetch_all(store.pool()).await?;
        tables.push(((*table).to_owned(), rows));
    }
    Ok(tables)
}

/// Prints how `rebuilt` compares with `live`, table by table; whether they are equal.
fn compare(live: &Snapshot, rebuilt: &Snapshot) -> bool {
    let mut equal = true;
    for ((table, live_rows), (_, rebuilt_rows)) in live.iter().zip(rebuilt) {
        if live_rows == rebuilt_rows {
            println!("   {table}: {} rows, identical", live_rows.len());
            continue;
        }
        equal = false;
        let live_set: BTreeSet<&String> = live_rows.iter().collect();
        let rebuilt_set: BTreeSet<&String> = rebuilt_rows.iter().collect();
        let only_live: Vec<_> = live_set.difference(&rebuilt_set).collect();
        let only_rebuilt: Vec<_> = rebuilt_set.difference(&live_set).collect();
        println!(
            "   {table}: DIFFERENT: {} rows live, {} rebuilt; {} only in the live table, {} only in the rebuilt one",
            live_rows.len(),
            rebuilt_rows.len(),
            only_live.len(),
            only_rebuilt.len()
        );
        for row in only_live.iter().take(SHOWN_DIFFERENCES) {
            println!("      live only:    {row}");
        }
        for row in only_rebuilt.iter().take(SHOWN_DIFFERENCES) {
            println!("      rebuilt only: {row}");
        }
    }
    equal
}
