//! The order aggregate: its events, commands, rules and the services it consults.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use eventsource::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// Most units of one item per order line.
pub const MAX_QUANTITY: u32 = 1_000;
/// Highest unit price, in cents (10,000.00).
pub const MAX_UNIT_PRICE_CENTS: u64 = 1_000_000;

/// Everything that can happen to an order. Type names are pinned: renaming a variant never
/// changes what is stored.
#[derive(Debug, Clone, PartialEq, DomainEvent)]
pub enum OrderEvent {
    /// A customer opened the order.
    #[event(name = "OrderPlaced")]
    Placed { customer: String },
    /// Units of an item were added (to a new or an existing line).
    #[event(name = "ItemAdded")]
    ItemAdded {
        sku: String,
        quantity: u32,
        unit_price_cents: u64,
    },
    /// A line was removed.
    #[event(name = "ItemRemoved")]
    ItemRemoved { sku: String },
    /// The customer confirmed; the lines are final.
    #[event(name = "OrderConfirmed")]
    Confirmed,
    /// The order left the warehouse.
    #[event(name = "OrderShipped")]
    Shipped { tracking_number: String },
    /// The order was called off.
    #[event(name = "OrderCancelled")]
    Cancelled { reason: String },
}

/// What can be asked of an order.
#[derive(Debug, Clone)]
pub enum OrderCommand {
    PlaceOrder {
        customer: String,
    },
    AddItem {
        sku: String,
        quantity: u32,
        unit_price_cents: u64,
    },
    RemoveItem {
        sku: String,
    },
    Confirm,
    Ship {
        tracking_number: String,
    },
    Cancel {
        reason: String,
    },
}

/// Why an order refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("the order was already placed")]
    AlreadyPlaced,
    #[error("the order has not been placed")]
    NotPlaced,
    #[error("a customer is required")]
    NoCustomer,
    #[error("items cannot change once the order is {0}")]
    ItemsFinal(OrderStatus),
    #[error("quantity must be between 1 and {MAX_QUANTITY}, got {0}")]
    InvalidQuantity(u32),
    #[error("unit price must be between 1 and {MAX_UNIT_PRICE_CENTS} cents, got {0}")]
    InvalidPrice(u64),
    #[error("{sku} is already on the order at {existing} cents, not {requested}")]
    PriceMismatch {
        sku: String,
        existing: u64,
        requested: u64,
    },
    #[error("{0} is not on the order")]
    UnknownItem(String),
    #[error("{0} is out of stock")]
    OutOfStock(String),
    #[error("an empty order cannot be confirmed")]
    EmptyOrder,
    #[error("only a confirmed order can ship (this one is {0})")]
    NotConfirmed(OrderStatus),
    #[error("a tracking number is required")]
    NoTrackingNumber,
    #[error("the order is {0} and can no longer be cancelled")]
    CannotCancel(OrderStatus),
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum OrderStatus {
    #[default]
    New,
    Open,
    Confirmed,
    Shipped,
    Cancelled,
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::New => "new",
            Self::Open => "open",
            Self::Confirmed => "confirmed",
            Self::Shipped => "shipped",
            Self::Cancelled => "cancelled",
        })
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub quantity: u32,
    pub unit_price_cents: u64,
}

/// An order, folded from its events (serializable, for snapshots).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub status: OrderStatus,
    pub customer: String,
    pub lines: BTreeMap<String, Line>,
}

impl Order {
    /// The order's total in cents.
    pub fn total_cents(&self) -> u64 {
        self.lines
            .values()
            .map(|l| u64::from(l.quantity) * l.unit_price_cents)
            .sum()
    }
}

/// Stock levels, consulted (asynchronously) before items are added.
#[async_trait]
pub trait Inventory: Send + Sync {
    /// Whether `quantity` units of `sku` can be sold.
    async fn in_stock(&self, sku: &str, quantity: u32) -> bool;
}

/// An inventory where everything is in stock except SKUs starting with `SOLDOUT`.
pub struct Warehouse;

#[async_trait]
impl Inventory for Warehouse {
    async fn in_stock(&self, sku: &str, _quantity: u32) -> bool {
        !sku.starts_with("SOLDOUT")
    }
}

/// What the order consults while deciding.
#[derive(Clone)]
pub struct OrderServices {
    pub inventory: Arc<dyn Inventory>,
}

impl Default for OrderServices {
    fn default() -> Self {
        Self {
            inventory: Arc::new(Warehouse),
        }
    }
}

#[async_trait]
impl Aggregate for Order {
    const CATEGORY: &'static str = "order";
    type Event = OrderEvent;
    type Command = OrderCommand;
    type Error = OrderError;
    type Services = OrderServices;

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed { customer } => {
                self.status = OrderStatus::Open;
                self.customer.clone_from(customer);
            }
            OrderEvent::ItemAdded {
                sku,
                quantity,
                unit_price_cents,
            } => {
                self.lines
                    .entry(sku.clone())
                    .and_modify(|l| l.quantity += quantity)
                    .or_insert(Line {
                        quantity: *quantity,
                        unit_price_cents: *unit_price_cents,
                    });
            }
            OrderEvent::ItemRemoved { sku } => {
                self.lines.remove(sku);
            }
            OrderEvent::Confirmed => self.status = OrderStatus::Confirmed,
            OrderEvent::Shipped { .. } => self.status = OrderStatus::Shipped,
            OrderEvent::Cancelled { .. } => self.status = OrderStatus::Cancelled,
        }
    }

    async fn handle(
        &self,
        command: &OrderCommand,
        services: &OrderServices,
    ) -> Result<Vec<OrderEvent>, OrderError> {
        use OrderCommand as C;
        use OrderStatus as S;
        match (command, self.status) {
            (C::PlaceOrder { .. }, S::New) => {}
            (C::PlaceOrder { .. }, _) => return Err(OrderError::AlreadyPlaced),
            (_, S::New) => return Err(OrderError::NotPlaced),
            _ => {}
        }
        let event = match command {
            C::PlaceOrder { customer } => {
                if customer.trim().is_empty() {
                    return Err(OrderError::NoCustomer);
                }
                OrderEvent::Placed {
                    customer: customer.clone(),
                }
            }
            C::AddItem {
                sku,
                quantity,
                unit_price_cents,
            } => {
                self.ensure_items_open()?;
                if !(1..=MAX_QUANTITY).contains(quantity) {
                    return Err(OrderError::InvalidQuantity(*quantity));
                }
                if !(1..=MAX_UNIT_PRICE_CENTS).contains(unit_price_cents) {
                    return Err(OrderError::InvalidPrice(*unit_price_cents));
                }
                if let Some(line) = self.lines.get(sku) {
                    if line.unit_price_cents != *unit_price_cents {
                        return Err(OrderError::PriceMismatch {
                            sku: sku.clone(),
                            existing: line.unit_price_cents,
                            requested: *unit_price_cents,
                        });
                    }
                    if line.quantity + quantity > MAX_QUANTITY {
                        return Err(OrderError::InvalidQuantity(line.quantity + quantity));
                    }
                }
                if !services.inventory.in_stock(sku, *quantity).await {
                    return Err(OrderError::OutOfStock(sku.clone()));
                }
                OrderEvent::ItemAdded {
                    sku: sku.clone(),
                    quantity: *quantity,
                    unit_price_cents: *unit_price_cents,
                }
            }
            C::RemoveItem { sku } => {
                self.ensure_items_open()?;
                if !self.lines.contains_key(sku) {
                    return Err(OrderError::UnknownItem(sku.clone()));
                }
                OrderEvent::ItemRemoved { sku: sku.clone() }
            }
            C::Confirm => {
                self.ensure_items_open()?;
                if self.lines.is_empty() {
                    return Err(OrderError::EmptyOrder);
                }
                OrderEvent::Confirmed
            }
            C::Ship { tracking_number } => {
                if self.status != S::Confirmed {
                    return Err(OrderError::NotConfirmed(self.status));
                }
                if tracking_number.trim().is_empty() {
                    return Err(OrderError::NoTrackingNumber);
                }
                OrderEvent::Shipped {
                    tracking_number: tracking_number.clone(),
                }
            }
            C::Cancel { reason } => {
                if matches!(self.status, S::Shipped | S::Cancelled) {
                    return Err(OrderError::CannotCancel(self.status));
                }
                OrderEvent::Cancelled {
                    reason: reason.clone(),
                }
            }
        };
        Ok(vec![event])
    }
}

impl Order {
    fn ensure_items_open(&self) -> Result<(), OrderError> {
        match self.status {
            OrderStatus::Open => Ok(()),
            other => Err(OrderError::ItemsFinal(other)),
        }
    }
}
