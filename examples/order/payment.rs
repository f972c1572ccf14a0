//! Payments: one stream per order (`payment-<order>`). The customer pays with a card; a declined
//! card is a fact (`PaymentDeclined`), not an error.

use async_trait::async_trait;
use eventsource::{Aggregate, DomainEvent};

/// What happens to an order's payment. Type names are pinned.
#[derive(Debug, Clone, PartialEq, DomainEvent)]
pub enum PaymentEvent {
    /// The customer is asked to pay.
    #[event(name = "PaymentRequested")]
    Requested { amount_cents: u64 },
    /// The money is taken.
    #[event(name = "PaymentCaptured")]
    Captured { amount_cents: u64 },
    /// The card was declined.
    #[event(name = "PaymentDeclined")]
    Declined { reason: String },
    /// The request was withdrawn (the order was cancelled).
    #[event(name = "PaymentCancelled")]
    Cancelled { reason: String },
}

/// What can be asked of a payment.
#[derive(Debug, Clone, PartialEq)]
pub enum PaymentCommand {
    Request { amount_cents: u64 },
    Pay { card: String },
    Cancel { reason: String },
}

/// Why a payment refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error("no payment was requested")]
    NotRequested,
    #[error("the payment was already requested")]
    AlreadyRequested,
    #[error("the payment is already {0}")]
    Settled(&'static str),
}

/// Where a payment is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PaymentStatus {
    #[default]
    None,
    Requested,
    Captured,
    Declined,
    Cancelled,
}

/// An order's payment.
#[derive(Debug, Clone, Default)]
pub struct Payment {
    pub status: PaymentStatus,
    pub amount_cents: u64,
}

/// Cards starting with this are declined (like a test card number).
pub const DECLINED_CARD_PREFIX: &str = "4000-0000-0000-0002";

#[async_trait]
impl Aggregate for Payment {
    const CATEGORY: &'static str = "payment";
    type Event = PaymentEvent;
    type Command = PaymentCommand;
    type Error = PaymentError;
    type Services = ();

    fn apply(&mut self, event: &PaymentEvent) {
        match event {
            PaymentEvent::Requested { amount_cents } => {
                self.status = PaymentStatus::Requested;
                self.amount_cents = *amount_cents;
            }
            PaymentEvent::Captured { .. } => self.status = PaymentStatus::Captured,
            PaymentEvent::Declined { .. } => self.status = PaymentStatus::Declined,
            PaymentEvent::Cancelled { .. } => self.status = PaymentStatus::Cancelled,
        }
    }

    async fn handle(
        &self,
        command: &PaymentCommand,
        _: &(),
    ) -> Result<Vec<PaymentEvent>, PaymentError> {
        let settled = match self.status {
            PaymentStatus::Captured => Some("captured"),
            PaymentStatus::Declined => Some("declined"),
            PaymentStatus::Cancelled => Some("cancelled"),
            PaymentStatus::None | PaymentStatus::Requested => None,
        };
        match command {
            PaymentCommand::Request { amount_cents } => match self.status {
                PaymentStatus::None => Ok(vec![PaymentEvent::Requested {
                    amount_cents: *amount_cents,
                }]),
                _ => Err(PaymentError::AlreadyRequested),
            },
            PaymentCommand::Pay { card } => match (self.status, settled) {
                (_, Some(settled)) => Err(PaymentError::Settled(settled)),
                (PaymentStatus::None, _) => Err(PaymentError::NotRequested),
                _ if card.starts_with(DECLINED_CARD_PREFIX) => Ok(vec![PaymentEvent::Declined {
                    reason: "card declined by the issuer".into(),
                }]),
                _ => Ok(vec![PaymentEvent::Captured {
                    amount_cents: self.amount_cents,
                }]),
            },
            PaymentCommand::Cancel { reason } => match settled {
                Some(settled) => Err(PaymentError::Settled(settled)),
                None => Ok(vec![PaymentEvent::Cancelled {
                    reason: reason.clone(),
                }]),
            },
        }
    }
}
