//! What a consuming service declares: its queue, bound to the relay's exchange, and the
//! dead-letter exchange and queue behind it.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use crate::amqp::{self, check_name, short, text_value};
use crate::error::RabbitMqError;

/// The queue an inbox consumes, and what it is bound to.
///
/// [`declare`](Self::declare) (run by [`RabbitMqInbox`](crate::RabbitMqInbox) on each
/// connection, so it is restored after the broker lost it) makes sure these exist, all durable:
/// - `exchange`: the relay's topic exchange, declared when absent;
/// - `dead_letter_exchange`: a fanout exchange, and `dead_letter_queue` bound to it;
/// - `queue`, with the argument `x-dead-letter-exchange` = `dead_letter_exchange` (so that a
///   message rejected or expired by any means lands in the dead-letter queue too), and, unless
///   turned off, `x-single-active-consumer` (several instances of the service may consume; one
///   at a time does, so each stream's messages are handled in order);
/// - one binding of `queue` to `exchange` per routing-key pattern in `bindings` (`order.*`,
///   `order.OrderPlaced`, `#` for everything).
///
/// What you provide: the names, and at least one binding. A queue or exchange that exists with
/// other settings (other arguments, not durable) is refused by the broker: delete it or keep
/// its settings. Bindings are only added; remove a binding you no longer want with
/// `rabbitmqctl` or the management UI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueTopology {
    /// The topic exchange the relay publishes to.
    pub exchange: String,
    /// The queue the inbox consumes (one per consuming service).
    pub queue: String,
    /// Routing-key patterns binding `queue` to `exchange`.
    pub bindings: Vec<String>,
    /// Where failed messages go (default `<queue>.dead-letter`).
    pub dead_letter_exchange: String,
    /// Where failed messages stay, for inspection and replay (default `<queue>.dead-letter`).
    pub dead_letter_queue: String,
    /// Declare `queue` with `x-single-active-consumer` (default `true`).
    pub single_active_consumer: bool,
}

impl QueueTopology {
    /// `queue` on `exchange`, with the default dead-letter names and no binding yet.
    ///
    /// ```
    /// use eventsource_relay_rabbitmq::QueueTopology;
    /// let topology = QueueTopology::new("orders", "billing").bind("order.*");
    /// assert_eq!(topology.dead_letter_queue, "billing.dead-letter");
    /// ```
    pub fn new(exchange: impl Into<String>, queue: impl Into<String>) -> Self {
        let queue = queue.into();
        Self {
            exchange: exchange.into(),
            dead_letter_exchange: format!("{queue}.dead-letter"),
            dead_letter_queue: format!("{queue}.dead-letter"),
            queue,
            bindings: Vec::new(),
            single_active_consumer: true,
        }
    }

    /// Adds a binding for the routing-key `pattern` (`*` matches one word, `#` any number).
    pub fn bind(mut self, pattern: impl Into<String>) -> Self {
        self.bindings.push(pattern.into());
        self
    }

    /// Other names for the dead-letter exchange and queue.
    pub fn with_dead_letter(
        mut self,
        exchange: impl Into<String>,
        queue: impl Into<String>,
    ) -> Self {
        self.dead_letter_exchange = exchange.into();
        self.dead_letter_queue = queue.into();
        self
    }

    /// Checks the names: none empty or over 255 bytes, at least one binding.
    pub fn check(&self) -> Result<(), RabbitMqError> {
        check_name("exchange", &self.exchange)?;
        check_name("queue", &self.queue)?;
        check_name("dead-letter exchange", &self.dead_letter_exchange)?;
        check_name("dead-letter queue", &self.dead_letter_queue)?;
        if self.dead_letter_exchange == self.exchange {
            return Err(RabbitMqError::Misconfigured {
                problem: format!(
                    "the dead-letter exchange is the relay's exchange `{}`; give it a name of its own",
                    self.exchange
                ),
            });
        }
        if self.bindings.is_empty() {
            return Err(RabbitMqError::Misconfigured {
                problem: format!(
                    "queue `{}` has no binding; add one with QueueTopology::bind (`order.*`, or `#` for every message)",
                    self.queue
                ),
            });
        }
        for pattern in &self.bindings {
            short("routing-key pattern", pattern)?;
        }
        Ok(())
    }

    /// Declares the exchanges, queues and bindings on `channel` (see the type's
    /// documentation).
    pub async fn declare(&self, channel: &Channel) -> Result<(), RabbitMqError> {
        self.check()?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        amqp::declare_topic_exchange(channel, &self.exchange).await?;
        channel
            .exchange_declare(
                short("exchange", &self.dead_letter_exchange)?,
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                RabbitMqError::declaration(
                    format!(
                        "declare the durable fanout exchange `{}`",
                        self.dead_letter_exchange
                    ),
                    e,
                )
            })?;
        channel
            .queue_declare(
                short("queue", &self.dead_letter_queue)?,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                RabbitMqError::declaration(
                    format!("declare the durable queue `{}`", self.dead_letter_queue),
                    e,
                )
            })?;
        channel
            .queue_bind(
                short("queue", &self.dead_letter_queue)?,
                short("exchange", &self.dead_letter_exchange)?,
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                RabbitMqError::declaration(
                    format!(
                        "bind queue `{}` to exchange `{}`",
                        self.dead_letter_queue, self.dead_letter_exchange
                    ),
                    e,
                )
            })?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-dead-letter-exchange".into(),
            text_value(self.dead_letter_exchange.as_str()),
        );
        if self.single_active_consumer {
            arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        }
        channel
            .queue_declare(short("queue", &self.queue)?, durable, arguments)
            .await
            .map_err(|e| {
                RabbitMqError::declaration(
                    format!(
                        "declare the durable queue `{}` (x-dead-letter-exchange `{}`{})",
                        self.queue,
                        self.dead_letter_exchange,
                        if self.single_active_consumer {
                            ", x-single-active-consumer"
                        } else {
                            ""
                        }
                    ),
                    e,
                )
            })?;
        for pattern in &self.bindings {
            channel
                .queue_bind(
                    short("queue", &self.queue)?,
                    short("exchange", &self.exchange)?,
                    short("routing-key pattern", pattern)?,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    RabbitMqError::declaration(
                        format!(
                            "bind queue `{}` to exchange `{}` for `{pattern}`",
                            self.queue, self.exchange
                        ),
                        e,
                    )
                })?;
        }
        Ok(())
    }
}
