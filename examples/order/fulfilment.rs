//! The fulfilment saga: a process manager over `Order`, `StockReservation` and `Payment`.
//!
//! ```text
//! OrderConfirmed  -> reserve the stock; payment due within `payment_timeout`
//!   refused       -> cancel the order (nothing to release)
//! StockReserved   -> request the payment
//! PaymentCaptured -> commit the stock; done
//! PaymentDeclined -> release the stock, cancel the order; done (compensation)
//! deadline        -> withdraw the payment request, release the stock, cancel the order; done
//! ```
//!
//! Every instance is keyed by the order id: the stock and payment streams of an order carry the
//! order's id as theirs. This demo follows only orders whose id starts with [`ORDER_PREFIX`], so
//! that running it on a database that holds the other commands' orders leaves those alone (a
//! real service follows every order).

use std::time::Duration;

use async_trait::async_trait;
use eventsource::process_manager::{CommandFailure, Decision, ProcessManager, Trigger};
use eventsource::{
    Aggregate, CommandContext, CommandError, DomainEvent, Envelope, EventAppender, Repository,
    StreamReader,
};
use serde::{Deserialize, Serialize};

use crate::domain::{Order, OrderCommand};
use crate::inventory::{StockCommand, StockReservation};
use crate::payment::{Payment, PaymentCommand};

/// The process manager's name (its checkpoint, lock, instances and deadlines).
pub const NAME: &str = "fulfilment";
/// The prefix of the order ids the saga follows.
pub const ORDER_PREFIX: &str = "saga-";
/// The name of the payment deadline.
pub const PAYMENT_DUE: &str = "payment-due";

/// The events the saga reacts to, from three aggregates: its own view of them, decoding only
/// what it needs (the payloads' other fields are ignored).
#[derive(Debug, Clone, PartialEq, DomainEvent)]
pub enum FulfilmentEvent {
    #[event(name = "OrderConfirmed")]
    OrderConfirmed,
    #[event(name = "StockReserved")]
    StockReserved,
    #[event(name = "PaymentCaptured")]
    PaymentCaptured,
    #[event(name = "PaymentDeclined")]
    PaymentDeclined { reason: String },
}

/// What the saga asks of the aggregates.
#[derive(Debug, Clone, PartialEq)]
pub enum FulfilmentCommand {
    ReserveStock { order: String },
    RequestPayment { order: String },
    CommitStock { order: String },
    ReleaseStock { order: String, reason: String },
    CancelPayment { order: String, reason: String },
    CancelOrder { order: String, reason: String },
}

impl FulfilmentCommand {
    /// The command's name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::ReserveStock { .. } => "ReserveStock",
            Self::RequestPayment { .. } => "RequestPayment",
            Self::CommitStock { .. } => "CommitStock",
            Self::ReleaseStock { .. } => "ReleaseStock",
            Self::CancelPayment { .. } => "CancelPayment",
            Self::CancelOrder { .. } => "CancelOrder",
        }
    }
}

/// Where an instance is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    #[default]
    NotStarted,
    ReservingStock,
    AwaitingPayment,
    Fulfilled,
    Cancelled,
}

/// An instance's state (stored as JSON between triggers).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FulfilmentState {
    pub order: String,
    pub stage: Stage,
    /// Why it was cancelled, when it was.
    pub cancelled_because: Option<String>,
}

/// The saga, carrying out its commands through repositories over the store `S`.
pub struct Fulfilment<S> {
    pub payment_timeout: Duration,
    orders: Repository<Order, S>,
    stock: Repository<StockReservation, S>,
    payments: Repository<Payment, S>,
}

impl<S: EventAppender + StreamReader + Clone> Fulfilment<S> {
    /// The saga over `store`, cancelling orders not paid within `payment_timeout`.
    pub fn new(store: S, payment_timeout: Duration) -> Self {
        Self {
            payment_timeout,
            orders: Repository::new(store.clone()),
            stock: Repository::new(store.clone()),
            payments: Repository::new(store),
        }
    }
}

/// A repository's outcome as the saga sees it: a domain refusal goes back into `decide`.
fn outcome<A: Aggregate>(
    result: Result<impl Sized, CommandError<A::Error>>,
) -> Result<(), CommandFailure> {
    match result {
        Ok(_) => Ok(()),
        Err(CommandError::Rejected(refusal)) => Err(CommandFailure::refused(refusal)),
        Err(other) => Err(CommandFailure::failed(other)),
    }
}

impl<S> Fulfilment<S> {
    fn cancel(
        state: &mut FulfilmentState,
        reason: &str,
        release_stock: bool,
        withdraw_payment: bool,
    ) -> Decision<FulfilmentCommand> {
        let order = state.order.clone();
        state.stage = Stage::Cancelled;
        state.cancelled_because = Some(reason.to_owned());
        let mut decision = Decision::new();
        if withdraw_payment {
            decision = decision.command(FulfilmentCommand::CancelPayment {
                order: order.clone(),
                reason: reason.to_owned(),
            });
        }
        if release_stock {
            decision = decision.command(FulfilmentCommand::ReleaseStock {
                order: order.clone(),
                reason: reason.to_owned(),
            });
        }
        decision
            .command(FulfilmentCommand::CancelOrder {
                order,
                reason: reason.to_owned(),
            })
            .complete()
    }
}

#[async_trait]
impl<S> ProcessManager for Fulfilment<S>
where
    S: EventAppender + StreamReader + Clone + Send + Sync + 'static,
{
    type Event = Envelope<FulfilmentEvent>;
    type State = FulfilmentState;
    type Command = FulfilmentCommand;

    fn name(&self) -> &str {
        NAME
    }

    fn instance_of(&self, event: &Envelope<FulfilmentEvent>) -> Option<String> {
        let order = event.stream_id.id();
        order.starts_with(ORDER_PREFIX).then(|| order.to_owned())
    }

    fn decide(
        &self,
        state: &mut FulfilmentState,
        trigger: Trigger<'_, Envelope<FulfilmentEvent>, FulfilmentCommand>,
    ) -> Decision<FulfilmentCommand> {
        use FulfilmentCommand as C;
        use FulfilmentEvent as E;
        match trigger {
            Trigger::Event(envelope) => match (&envelope.event, state.stage) {
                (E::OrderConfirmed, Stage::NotStarted) => {
                    state.order = envelope.stream_id.id().to_owned();
                    state.stage = Stage::ReservingStock;
                    Decision::new()
                        .command(C::ReserveStock {
                            order: state.order.clone(),
                        })
                        .set_deadline(PAYMENT_DUE, self.payment_timeout)
                }
                (E::StockReserved, Stage::ReservingStock) => {
                    state.stage = Stage::AwaitingPayment;
                    Decision::new().command(C::RequestPayment {
                        order: state.order.clone(),
                    })
                }
                (E::PaymentCaptured, Stage::AwaitingPayment) => {
                    state.stage = Stage::Fulfilled;
                    Decision::new()
                        .command(C::CommitStock {
                            order: state.order.clone(),
                        })
                        .cancel_deadline(PAYMENT_DUE)
                        .complete()
                }
                (E::PaymentDeclined { reason }, Stage::AwaitingPayment) => {
                    Self::cancel(state, &format!("payment declined: {reason}"), true, false)
                }
                // Events of orders the saga did not start, or that come too late.
                _ => Decision::new(),
            },
            Trigger::Deadline { .. } => match state.stage {
                Stage::ReservingStock => Self::cancel(state, "not paid in time", false, true),
                Stage::AwaitingPayment => Self::cancel(state, "not paid in time", true, true),
                _ => Decision::new(),
            },
            Trigger::Refused {
                command: C::ReserveStock { .. },
                reason,
            } => Self::cancel(state, &format!("stock: {reason}"), false, false),
            // A compensation refused because it is already done (stock released, order
            // cancelled): nothing more to do.
            Trigger::Refused { .. } => Decision::new(),
        }
    }

    async fn execute(
        &self,
        command: &FulfilmentCommand,
        ctx: &CommandContext,
    ) -> Result<(), CommandFailure> {
        use FulfilmentCommand as C;
        let id = |order: &str| order.to_owned();
        // The command's name travels as a header onto its events (for `order saga` to show).
        let ctx = &ctx.clone().with_header("command", command.name());
        match command {
            C::ReserveStock { order } => {
                let loaded = self
                    .orders
                    .load(&stream::<Order>(order)?)
                    .await
                    .map_err(CommandFailure::failed)?;
                let lines = loaded
                    .state
                    .lines
                    .iter()
                    .map(|(sku, l)| (sku.clone(), l.quantity))
                    .collect();
                outcome::<StockReservation>(
                    self.stock
                        .execute(
                            &stream::<StockReservation>(&id(order))?,
                            StockCommand::Reserve { lines },
                            ctx,
                        )
                        .await,
                )
            }
            C::RequestPayment { order } => {
                let loaded = self
                    .orders
                    .load(&stream::<Order>(order)?)
                    .await
                    .map_err(CommandFailure::failed)?;
                let amount_cents = loaded.state.total_cents();
                outcome::<Payment>(
                    self.payments
                        .execute(
                            &stream::<Payment>(order)?,
                            PaymentCommand::Request { amount_cents },
                            ctx,
                        )
                        .await,
                )
            }
            C::CommitStock { order } => outcome::<StockReservation>(
                self.stock
                    .execute(
                        &stream::<StockReservation>(order)?,
                        StockCommand::Commit,
                        ctx,
                    )
                    .await,
            ),
            C::ReleaseStock { order, reason } => outcome::<StockReservation>(
                self.stock
                    .execute(
                        &stream::<StockReservation>(order)?,
                        StockCommand::Release {
                            reason: reason.clone(),
                        },
                        ctx,
                    )
                    .await,
            ),
            C::CancelPayment { order, reason } => outcome::<Payment>(
                self.payments
                    .execute(
                        &stream::<Payment>(order)?,
                        PaymentCommand::Cancel {
                            reason: reason.clone(),
                        },
                        ctx,
                    )
                    .await,
            ),
            C::CancelOrder { order, reason } => outcome::<Order>(
                self.orders
                    .execute(
                        &stream::<Order>(order)?,
                        OrderCommand::Cancel {
                            reason: reason.clone(),
                        },
                        ctx,
                    )
                    .await,
            ),
        }
    }
}

fn stream<A: Aggregate>(id: &str) -> Result<eventsource::StreamId, CommandFailure> {
    A::stream_id(id).map_err(CommandFailure::failed)
}
