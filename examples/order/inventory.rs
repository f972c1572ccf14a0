//! Stock reservations: the warehouse's side of an order, one stream per order (`stock-<order>`).

use async_trait::async_trait;
use eventsource::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// What happens to an order's stock. Type names are pinned.
#[derive(Debug, Clone, PartialEq, DomainEvent)]
pub enum StockEvent {
    /// The order's units are set aside.
    #[event(name = "StockReserved")]
    Reserved { lines: Vec<(String, u32)> },
    /// The units went back on the shelf.
    #[event(name = "StockReleased")]
    Released { reason: String },
    /// The units are sold (the order was paid).
    #[event(name = "StockCommitted")]
    Committed,
}

/// What the warehouse is asked.
#[derive(Debug, Clone, PartialEq)]
pub enum StockCommand {
    Reserve { lines: Vec<(String, u32)> },
    Release { reason: String },
    Commit,
}

/// Why the warehouse refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StockError {
    #[error("{0} is on back order")]
    BackOrdered(String),
    #[error("the stock of this order is already {0}")]
    AlreadyDone(&'static str),
    #[error("no stock is reserved for this order")]
    NotReserved,
}

/// Where an order's stock is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StockStatus {
    #[default]
    None,
    Reserved,
    Released,
    Committed,
}

/// An order's stock reservation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StockReservation {
    pub status: StockStatus,
}

#[async_trait]
impl Aggregate for StockReservation {
    const CATEGORY: &'static str = "stock";
    type Event = StockEvent;
    type Command = StockCommand;
    type Error = StockError;
    type Services = ();

    fn apply(&mut self, event: &StockEvent) {
        self.status = match event {
            StockEvent::Reserved { .. } => StockStatus::Reserved,
            StockEvent::Released { .. } => StockStatus::Released,
            StockEvent::Committed => StockStatus::Committed,
        };
    }

    async fn handle(&self, command: &StockCommand, _: &()) -> Result<Vec<StockEvent>, StockError> {
        match (command, self.status) {
            (StockCommand::Reserve { lines }, StockStatus::None) => {
                // SKUs starting with BACKORDER are never in the warehouse.
                if let Some((sku, _)) = lines.iter().find(|(sku, _)| sku.starts_with("BACKORDER")) {
                    return Err(StockError::BackOrdered(sku.clone()));
                }
                Ok(vec![StockEvent::Reserved {
                    lines: lines.clone(),
                }])
            }
            (StockCommand::Reserve { .. }, _) => Err(StockError::AlreadyDone("reserved")),
            (StockCommand::Release { reason }, StockStatus::Reserved) => {
                Ok(vec![StockEvent::Released {
                    reason: reason.clone(),
                }])
            }
            (StockCommand::Commit, StockStatus::Reserved) => Ok(vec![StockEvent::Committed]),
            (_, StockStatus::None) => Err(StockError::NotReserved),
            (_, StockStatus::Released) => Err(StockError::AlreadyDone("released")),
            (_, StockStatus::Committed) => Err(StockError::AlreadyDone("committed")),
        }
    }
}
