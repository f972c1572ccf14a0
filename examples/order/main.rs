//! The order example: an `Order` aggregate on PostgreSQL (or in memory with `--in-memory`), and
//! two read models built from its events.
//!
//! ```text
//! cargo run --example order                      # PostgreSQL: DATABASE_URL, the local default, or a throwaway server
//! cargo run --example order -- --in-memory       # the same scenario on the in-memory store
//! cargo run --example order -- rebuild           # rebuild the read models and check them against the live ones
//! cargo run --example order -- rebuild --seed 2000   # ... after appending 2,000 generated orders
//! cargo run --example order -- watch             # both read models live under a supervisor, while orders come in
//! cargo run --example order -- watch --relay     # ... and confirmations relayed to RabbitMQ (see the shipping example)
//! cargo run --example order -- saga              # the fulfilment saga: paid, declined (compensated), unpaid (deadline)
//! ```

mod customer_stats;
mod database;
mod domain;
mod fulfilment;
mod inventory;
mod order_events;
mod order_summary;
mod payment;
mod progress;
mod public_events;
mod read_models;
mod rebuild_check;
mod saga;
mod scenario;
mod seed;
mod watch;

use std::error::Error;

use clap::{Parser, Subcommand};
use eventsource::postgres::PostgresStore;
use eventsource::InMemoryStore;

/// Runs the order scenario: commands that succeed, commands the order refuses, and two writers
/// colliding on one order; then shows the read models built from the events.
#[derive(Parser)]
#[command(about)]
struct Args {
    /// Run on the in-memory store instead of PostgreSQL (the scenario only).
    #[arg(long)]
    in_memory: bool,
    /// The PostgreSQL server (default: DATABASE_URL, else postgres://postgres@127.0.0.1:5432/postgres,
    /// else a throwaway server started from the installed binaries).
    #[arg(long, global = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Bring the read models up to date, rebuild them from the start of the feed, and check that
    /// the rebuilt tables equal the live ones (exits non-zero if not).
    Rebuild {
        /// First append this many generated orders (concurrently, through the repository).
        #[arg(long, default_value_t = 0)]
        seed: usize,
    },
    /// Run both read models live under a supervisor, place an order every second, print the
    /// supervisor's status view every second, then shut down.
    Watch {
        /// Orders to place, one a second; the view is printed for two more seconds after them.
        #[arg(long, default_value_t = 3)]
        orders: u64,
        /// Also relay order confirmations to RabbitMQ (exchange `orders`), for the shipping
        /// example: to RABBITMQ_URL, else amqp://guest:guest@127.0.0.1:5672/%2f.
        #[arg(long)]
        relay: bool,
    },
    /// Run the fulfilment saga (a process manager over Order, StockReservation and Payment) on
    /// three orders: paid, payment declined (compensated), not paid in time (cancelled by its
    /// deadline); print the commands each instance issued and the correlation id linking them.
    Saga,
}

/// The customers of the scenario.
const SCENARIO_CUSTOMERS: [&str; 3] = ["alice", "bob", "carol"];

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    if args.in_memory {
        if args.command.is_some() {
            return Err(
                "the read models, and so `rebuild` and `watch`, need PostgreSQL: drop --in-memory"
                    .into(),
            );
        }
        println!("Store: in memory");
        scenario::run(InMemoryStore::new()).await?;
        println!("\n(The read models, order_summary and customer_stats, live in PostgreSQL: run without --in-memory to see them.)");
        return Ok(());
    }
    let db = database::connect(args.database_url).await?;
    println!("Store: PostgreSQL at {}", db.url);
    let result = match args.command {
        None => scenario_and_read_models(&db.store).await,
        Some(Command::Rebuild { seed }) => rebuild_check::run(&db.store, seed).await,
        Some(Command::Watch { orders, relay }) => {
            let url = relay.then(|| {
                std::env::var("RABBITMQ_URL")
                    .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
            });
            watch::run(&db.store, orders, url.as_deref()).await
        }
        Some(Command::Saga) => saga::run(&db.store).await,
    };
    db.store.close().await;
    if let Some(server) = db.local_server {
        println!("\nStopping the throwaway PostgreSQL server.");
        drop(server);
    }
    result
}

/// The scenario, then the read models' view of it.
async fn scenario_and_read_models(store: &PostgresStore) -> Result<(), Box<dyn Error>> {
    let orders = scenario::run(store.clone()).await?;
    read_models::show(store, &orders, &SCENARIO_CUSTOMERS).await
}
