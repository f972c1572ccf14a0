//! Bringing the two read models up to date and showing them.

use std::error::Error;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use eventsource::postgres::projection::{Projection, ProjectionRunner};
use eventsource::postgres::{PostgresStore, Supervisor};
use eventsource::{FeedPosition, StreamId};

use crate::customer_stats::CustomerStatsProjection;
use crate::order_summary::OrderSummaryProjection;

const SHOW_ORDER_SUMMARY: &str = include_str!("sql/show_order_summary.sql");
const SHOW_CUSTOMER_STATS: &str = include_str!("sql/show_customer_stats.sql");

/// Both read models of the example.
pub struct ReadModels {
    /// One row per order.
    pub order_summary: Arc<OrderSummaryProjection>,
    /// Orders and revenue per customer.
    pub customer_stats: Arc<CustomerStatsProjection>,
}

impl ReadModels {
    /// The two projections.
    pub fn new() -> Result<Self, Box<dyn Error>> {
        Ok(Self {
            order_summary: Arc::new(OrderSummaryProjection),
            customer_stats: Arc::new(CustomerStatsProjection),
        })
    }

    /// Brings both up to date (see [`catch_up`]); returns their checkpoints.
    pub async fn catch_up(
        &self,
        store: &PostgresStore,
    ) -> Result<(FeedPosition, FeedPosition), Box<dyn Error>> {
        tokio::try_join!(
            catch_up(store, self.order_summary.clone()),
            catch_up(store, self.customer_stats.clone()),
        )
        .map_err(|e| e as Box<dyn Error>)
    }

    /// A supervisor running both read models' runners, to follow the feed live until shutdown
    /// (see [`crate::watch`]).
    pub fn supervisor(&self, store: &PostgresStore) -> Supervisor {
        Supervisor::new()
            .with(ProjectionRunner::with_shared(
                store.clone(),
                self.order_summary.clone(),
            ))
            .with(ProjectionRunner::with_shared(
                store.clone(),
                self.customer_stats.clone(),
            ))
    }
}

/// Runs `projection` until it has applied every order event committed so far; returns its
/// checkpoint.
pub async fn catch_up<P: Projection>(
    store: &PostgresStore,
    projection: Arc<P>,
) -> Result<FeedPosition, Box<dyn Error + Send + Sync>> {
    let runner = ProjectionRunner::with_shared(store.clone(), projection);
    Ok(runner.run_until_caught_up().await?)
}

/// Brings both read models up to date and prints the summaries of `orders` and the figures of
/// `customers`.
pub async fn show(
    store: &PostgresStore,
    orders: &[StreamId],
    customers: &[&str],
) -> Result<(), Box<dyn Error>> {
    let models = ReadModels::new()?;
    let (summary_at, stats_at) = models.catch_up(store).await?;

    println!("\n== The read models, caught up");
    println!("order_summary (checkpoint {summary_at}):");
    println!(
        "   {:<36} {:<8} {:<10} {:>5} {:>10} {:>7}  updated",
        "order", "customer", "status", "items", "total", "version"
    );
    type SummaryRow = (String, String, String, i64, i64, i64, DateTime<Utc>);
    let order_ids: Vec<&str> = orders.iter().map(StreamId::id).collect();
    let rows: Vec<SummaryRow> = sqlx::query_as(SHOW_ORDER_SUMMARY)
        .bind(&order_ids)
        .fetch_all(store.pool())
        .await?;
    for (order, customer, status, items, total, version, updated) in rows {
        println!(
            "   {order:<36} {customer:<8} {status:<10} {items:>5} {:>10} {version:>7}  {}",
            money(total),
            updated.format("%H:%M:%S%.3f")
        );
    }

    println!(
        "customer_stats (checkpoint {stats_at}; every order in the database, earlier runs' too; \
         revenue: confirmed and shipped orders):"
    );
    println!("   {:<8} {:>6} {:>10}", "customer", "orders", "revenue");
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(SHOW_CUSTOMER_STATS)
        .bind(customers)
        .fetch_all(store.pool())
        .await?;
    for (customer, orders, revenue) in rows {
        println!("   {customer:<8} {orders:>6} {:>10}", money(revenue));
    }
    Ok(())
}

/// Cents as units and hundredths.
fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.unsigned_abs();
    format!("{sign}{}.{:02}", cents / 100, cents % 100)
}
