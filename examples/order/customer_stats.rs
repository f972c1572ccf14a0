//! The `customer_stats` read model: per customer, the orders placed and the revenue.
//!
//! **Revenue** is the sum of the totals of the customer's orders that are confirmed or shipped.
//! An order starts counting when it is confirmed (its lines are final from then on) and stops
//! counting if it is cancelled afterwards; open and cancelled orders count for nothing. Every
//! order placed counts in `orders`, whatever became of it.
//!
//! The projection keeps its own per-order state in `customer_stats_orders` (customer, status,
//! the cents of each line, total): a projection reads only its own tables, never another read
//! model's. A batch loads the state of the orders it continues, folds the events in memory,
//! and writes with two statements: the touched orders, then each touched customer's change
//! (what the batch's orders contribute now minus what they contributed before).

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use eventsource::postgres::projection::Projection;
use eventsource::{BoxError, FeedFilter, StreamVersion};
use sqlx::types::Json;
use sqlx::{Executor, PgConnection};

use crate::domain::{OrderEvent, OrderStatus};
use crate::order_events::{self, bigint, not_placed, parse_status, OrderChange};

const SETUP: &str = include_str!("sql/customer_stats/setup.sql");
const LOAD_ORDERS: &str = include_str!("sql/customer_stats/load_orders.sql");
const UPSERT_ORDERS: &str = include_str!("sql/customer_stats/upsert_orders.sql");
const ADD_TO_CUSTOMERS: &str = include_str!("sql/customer_stats/add_to_customers.sql");

/// The projection's name (its checkpoint and runner lock).
pub const NAME: &str = "customer_stats";

/// The projection that keeps the `customer_stats` table (and its helper `customer_stats_orders`).
pub struct CustomerStatsProjection;

#[async_trait]
impl Projection for CustomerStatsProjection {
    type Event = OrderChange;
    type Error = BoxError;

    fn name(&self) -> &str {
        NAME
    }

    fn tables(&self) -> &[&str] {
        &["customer_stats", "customer_stats_orders"]
    }

    fn filter(&self) -> FeedFilter {
        order_events::order_filter()
    }

    async fn setup(&self, tx: &mut PgConnection) -> Result<(), BoxError> {
        // Two CREATE TABLEs: `raw_sql` sends them as one simple query.
        tx.execute(sqlx::raw_sql(SETUP)).await?;
        Ok(())
    }

    async fn handle(&self, tx: &mut PgConnection, events: &[OrderChange]) -> Result<(), BoxError> {
        apply(tx, order_events::by_order(events)).await
    }
}

/// What the projection remembers of one order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OrderTotals {
    order_id: String,
    customer: String,
    status: OrderStatus,
    /// Cents of each line, by sku.
    line_totals: BTreeMap<String, u64>,
}

/// What one order adds to its customer's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Contribution {
    orders: i64,
    revenue_cents: i64,
}

impl OrderTotals {
    /// The order's total in cents, or an error if it overflows.
    fn total_cents(&self) -> Result<u64, BoxError> {
        self.line_totals
            .values()
            .try_fold(0u64, |total, cents| total.checked_add(*cents))
            .ok_or_else(|| format!("order {}: the total overflows", self.order_id).into())
    }

    /// What the order adds to its customer's figures (see the module documentation).
    fn contribution(&self) -> Result<Contribution, BoxError> {
        let counts = matches!(self.status, OrderStatus::Confirmed | OrderStatus::Shipped);
        let revenue = if counts { self.total_cents()? } else { 0 };
        Ok(Contribution {
            orders: 1,
            revenue_cents: bigint(revenue, "revenue", &self.order_id)?,
        })
    }

    /// Folds one change into an order's state (`None`: not placed yet).
    fn fold(totals: Option<Self>, change: &OrderChange) -> Result<Self, BoxError> {
        let mut totals = match (totals, &change.event) {
            (Some(totals), _) => totals,
            (None, OrderEvent::Placed { customer }) => Self {
                order_id: change.stream_id.id().to_owned(),
                customer: customer.clone(),
                status: OrderStatus::Open,
                line_totals: BTreeMap::new(),
            },
            (None, _) => return Err(not_placed(change)),
        };
        match &change.event {
            OrderEvent::Placed { customer } => {
                totals.customer.clone_from(customer);
                totals.status = OrderStatus::Open;
            }
            OrderEvent::ItemAdded {
                sku,
                quantity,
                unit_price_cents,
            } => {
                let line = totals.line_totals.entry(sku.clone()).or_insert(0);
                *line = u64::from(*quantity)
                    .checked_mul(*unit_price_cents)
                    .and_then(|added| line.checked_add(added))
                    .ok_or_else(|| {
                        format!(
                            "order {}: the line of {sku} overflows",
                            change.stream_id.id()
                        )
                    })?;
            }
            OrderEvent::ItemRemoved { sku } => {
                totals.line_totals.remove(sku);
            }
            OrderEvent::Confirmed => totals.status = OrderStatus::Confirmed,
            OrderEvent::Shipped { .. } => totals.status = OrderStatus::Shipped,
            OrderEvent::Cancelled { .. } => totals.status = OrderStatus::Cancelled,
        }
        Ok(totals)
    }
}

/// Applies a batch's changes, grouped by order, to the projection's tables in `conn`'s
/// `search_path`.
async fn apply(
    conn: &mut PgConnection,
    changes: BTreeMap<String, Vec<&OrderChange>>,
) -> Result<(), BoxError> {
    // An order whose version 1 is in the batch has no state yet.
    let continued: Vec<String> = changes
        .iter()
        .filter(|(_, changes)| changes.first().map(|c| c.version) != Some(StreamVersion::FIRST))
        .map(|(order_id, _)| order_id.clone())
        .collect();
    let mut known = if continued.is_empty() {
        HashMap::new()
    } else {
        load_orders(&mut *conn, &continued).await?
    };

    let mut touched = Vec::with_capacity(changes.len());
    let mut by_customer: BTreeMap<String, Contribution> = BTreeMap::new();
    for (order_id, changes) in changes {
        let before = known.remove(&order_id);
        if let Some(before) = &before {
            let removed = before.contribution()?;
            let customer = by_customer.entry(before.customer.clone()).or_default();
            customer.orders -= removed.orders;
            customer.revenue_cents -= removed.revenue_cents;
        }
        let mut totals = before;
        for change in &changes {
            totals = Some(OrderTotals::fold(totals, change)?);
        }
        if let Some(after) = totals {
            let added = after.contribution()?;
            let customer = by_customer.entry(after.customer.clone()).or_default();
            customer.orders += added.orders;
            customer.revenue_cents += added.revenue_cents;
            touched.push(after);
        }
    }
    by_customer.retain(|_, change| *change != Contribution::default());

    upsert_orders(&mut *conn, &touched).await?;
    add_to_customers(conn, &by_customer).await
}

/// The state of `order_ids` that the projection has seen, by order id.
async fn load_orders(
    conn: &mut PgConnection,
    order_ids: &[String],
) -> Result<HashMap<String, OrderTotals>, BoxError> {
    type Row = (String, String, String, Json<BTreeMap<String, u64>>);
    let rows: Vec<Row> = sqlx::query_as(LOAD_ORDERS)
        .bind(order_ids)
        .fetch_all(conn)
        .await?;
    let mut orders = HashMap::with_capacity(rows.len());
    for (order_id, customer, status, Json(line_totals)) in rows {
        let totals = OrderTotals {
            order_id: order_id.clone(),
            customer,
            status: parse_status(&status)?,
            line_totals,
        };
        orders.insert(order_id, totals);
    }
    Ok(orders)
}

/// Inserts or replaces the state of `orders` with one statement.
async fn upsert_orders(conn: &mut PgConnection, orders: &[OrderTotals]) -> Result<(), BoxError> {
    if orders.is_empty() {
        return Ok(());
    }
    let mut order_ids = Vec::with_capacity(orders.len());
    let mut customers = Vec::with_capacity(orders.len());
    let mut statuses = Vec::with_capacity(orders.len());
    let mut line_totals = Vec::with_capacity(orders.len());
    let mut totals = Vec::with_capacity(orders.len());
    for order in orders {
        order_ids.push(order.order_id.as_str());
        customers.push(order.customer.as_str());
        statuses.push(order.status.to_string());
        line_totals.push(Json(&order.line_totals));
        totals.push(bigint(order.total_cents()?, "total", &order.order_id)?);
    }
    sqlx::query(UPSERT_ORDERS)
        .bind(order_ids)
        .bind(customers)
        .bind(statuses)
        .bind(line_totals)
        .bind(totals)
        .execute(conn)
        .await?;
    Ok(())
}

/// Adds each customer's change to their figures with one statement.
async fn add_to_customers(
    conn: &mut PgConnection,
    changes: &BTreeMap<String, Contribution>,
) -> Result<(), BoxError> {
    if changes.is_empty() {
        return Ok(());
    }
    let customers: Vec<&str> = changes.keys().map(String::as_str).collect();
    let orders: Vec<i64> = changes.values().map(|c| c.orders).collect();
    let revenue: Vec<i64> = changes.values().map(|c| c.revenue_cents).collect();
    sqlx::query(ADD_TO_CUSTOMERS)
        .bind(customers)
        .bind(orders)
        .bind(revenue)
        .execute(conn)
        .await?;
    Ok(())
}
