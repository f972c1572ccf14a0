//! The relay's side: [`RabbitMqPublisher`] publishes to a durable topic exchange with publisher
//! confirms, persistent messages and mandatory routing.

use std::time::Duration;

use async_trait::async_trait;
use eventsource_postgres::relay::{OutgoingMessage, PublishError, Publisher};
use futures::future::join_all;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use crate::amqp::{self, check_name, short, text_value, within};
use crate::error::RabbitMqError;

/// RabbitMQ's own default limit on a message's size (`max_message_size`, 128 MiB).
pub const RABBITMQ_MAX_MESSAGE_BYTES: usize = 128 * 1024 * 1024;

/// AMQP `delivery_mode` of a message the broker writes to disk.
const PERSISTENT: u8 = 2;

/// How a [`RabbitMqPublisher`] publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherOptions {
    /// The topic exchange the relay publishes to (default `eventsource`).
    pub exchange: String,
    /// Whether to declare the exchange (durable, topic) on connecting, when it is absent
    /// (default `true`). When `false`, the exchange must exist: the publisher checks it
    /// passively and reports it missing.
    pub declare_exchange: bool,
    /// How long a call may wait for the connection and for the broker's confirms (default
    /// 30 s); then the messages count as unavailable, the connection is dropped and the relay
    /// sends them again.
    pub timeout: Duration,
    /// Messages with a larger body are refused without being sent (default
    /// [`RABBITMQ_MAX_MESSAGE_BYTES`]). Set it to the broker's `max_message_size` when that is
    /// lower: the broker closes the channel on a larger message instead of refusing just it.
    pub max_message_bytes: usize,
    /// The connection's name in `rabbitmqctl list_connections` (default `eventsource-relay`).
    pub connection_name: String,
}

impl PublisherOptions {
    /// The defaults, publishing to `exchange`.
    pub fn new(exchange: impl Into<String>) -> Self {
        Self {
            exchange: exchange.into(),
            ..Self::default()
        }
    }
}

impl Default for PublisherOptions {
    fn default() -> Self {
        Self {
            exchange: "eventsource".to_owned(),
            declare_exchange: true,
            timeout: Duration::from_secs(30),
            max_message_bytes: RABBITMQ_MAX_MESSAGE_BYTES,
            connection_name: "eventsource-relay".to_owned(),
        }
    }
}

/// A relay's [`Publisher`] for RabbitMQ.
///
/// Each message goes to the topic exchange with routing key `<category>.<EventType>`
/// ([`OutgoingMessage::routing_key`]), and carries:
/// - `message_id` = the event id, `correlation_id` = the correlation id, `type` = the event
///   type, `timestamp` = when it was recorded (seconds), `content_type` = `application/json`,
///   `delivery_mode` = 2 (persistent);
/// - every envelope header ([`OutgoingMessage::headers`]) in the headers table, as text.
///
/// It is published with `mandatory` set, on a channel in confirm mode, and counts as sent
/// once the broker confirms it:
/// - a message no queue is bound for is returned by the broker, and refused
///   ([`PublishError::Refused`]): the relay parks it as a relay dead letter. Declare the
///   consumers' queues (for instance with [`RabbitMqInbox::declare`](crate::RabbitMqInbox::declare))
///   before the relay starts;
/// - a body over [`PublisherOptions::max_message_bytes`], or a routing key over 255 bytes, is
///   refused without being sent;
/// - a lost connection, a negative confirm (the broker could not store it) or no confirm in
///   time is [`PublishError::Unavailable`]: the relay sends it again after a backoff, and the
///   publisher reconnects first.
///
/// The connection is opened on the first call. All messages of a call are pipelined on one
/// channel, then their confirms awaited together.
pub struct RabbitMqPublisher {
    uri: AMQPUri,
    options: PublisherOptions,
    exchange: ShortString,
    open: Option<Open>,
}

/// A connection and its confirm-mode channel.
struct Open {
    connection: Connection,
    channel: Channel,
}

impl RabbitMqPublisher {
    /// A publisher to the broker at `url` (`amqp://user:password@host:5672/vhost`), publishing
    /// per `options`. Nothing is connected yet.
    ///
    /// ```
    /// use eventsource_relay_rabbitmq::{PublisherOptions, RabbitMqPublisher};
    /// let publisher = RabbitMqPublisher::new(
    ///     "amqp://guest:guest@127.0.0.1:5672/%2f",
    ///     PublisherOptions::new("orders"),
    /// )?;
    /// # Ok::<(), eventsource_relay_rabbitmq::RabbitMqError>(())
    /// ```
    pub fn new(url: &str, options: PublisherOptions) -> Result<Self, RabbitMqError> {
        let uri = amqp::parse_url(url)?;
        check_name("exchange", &options.exchange)?;
        if options.timeout.is_zero() {
            return Err(RabbitMqError::Misconfigured {
                problem: "PublisherOptions::timeout is zero; give the broker time to confirm (default 30 s)".to_owned(),
            });
        }
        let exchange = short("exchange", &options.exchange)?;
        Ok(Self {
            uri,
            options,
            exchange,
            open: None,
        })
    }

    /// The options.
    pub fn options(&self) -> &PublisherOptions {
        &self.options
    }

    /// The open confirm-mode channel, opening the connection (and declaring the exchange)
    /// first when there is none or it broke.
    async fn channel(&mut self) -> Result<Channel, RabbitMqError> {
        if let Some(open) = &self.open {
            if open.channel.status().connected() && open.connection.status().connected() {
                return Ok(open.channel.clone());
            }
            self.open = None;
        }
        let open = within(self.options.timeout, "open the publisher's channel", async {
            let connection = amqp::connect(
                &self.uri,
                &self.options.connection_name,
                self.options.timeout,
            )
            .await?;
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| RabbitMqError::unavailable("open a channel", e))?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| {
                    RabbitMqError::unavailable("put the channel in confirm mode", e)
                })?;
            if self.options.declare_exchange {
                amqp::declare_topic_exchange(&channel, &self.options.exchange).await?;
            } else {
                channel
                    .exchange_declare(
                        self.exchange.clone(),
                        lapin::ExchangeKind::Topic,
                        lapin::options::ExchangeDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| {
                        RabbitMqError::declaration(
                            format!(
                                "find the exchange `{}` (PublisherOptions::declare_exchange is off)",
                                self.options.exchange
                            ),
                            e,
                        )
                    })?;
            }
            Ok(Open {
                connection,
                channel,
            })
        })
        .await?;
        tracing::debug!(exchange = %self.options.exchange, "publisher connected to RabbitMQ");
        let channel = open.channel.clone();
        self.open = Some(open);
        Ok(channel)
    }

    /// Publishes one message and waits for its confirm.
    async fn publish_one(
        &self,
        channel: &Channel,
        message: &OutgoingMessage,
    ) -> Result<(), PublishError> {
        if message.payload.len() > self.options.max_message_bytes {
            return Err(PublishError::Refused(format!(
                "the body is {} bytes, over the limit of {} (PublisherOptions::max_message_bytes, the broker's max_message_size); map the event to a smaller integration event",
                message.payload.len(),
                self.options.max_message_bytes
            )));
        }
        let routing_key = ShortString::try_new(message.routing_key()).map_err(|_| {
            PublishError::Refused(format!(
                "the routing key `{}` is over 255 bytes; use a shorter category or event type",
                message.routing_key()
            ))
        })?;
        let properties = properties(message)?;
        let confirm = channel
            .basic_publish(
                self.exchange.clone(),
                routing_key,
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &message.payload,
                properties,
            )
            .await
            .map_err(|e| unavailable("publish", e))?;
        match confirm.await.map_err(|e| unavailable("await the confirm", e))? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(PublishError::Refused(format!(
                "unroutable: no queue is bound to exchange `{}` for routing key `{}` (the broker returned it: {} {}); bind a queue for it, then republish the parked event",
                self.options.exchange,
                message.routing_key(),
                returned.reply_code,
                returned.reply_text
            ))),
            Confirmation::Nack(_) => Err(PublishError::Unavailable(
                "the broker nacked the message: it could not store it (a full queue that rejects publishes, an internal error); it is sent again".into(),
            )),
            Confirmation::NotRequested => Err(PublishError::Unavailable(
                "the channel is not in confirm mode; it is opened again".into(),
            )),
        }
    }
}

/// An unavailable broker while doing `operation`.
fn unavailable(operation: &str, error: lapin::Error) -> PublishError {
    PublishError::Unavailable(Box::new(RabbitMqError::unavailable(operation, error)))
}

/// The AMQP properties of `message`: ids, type, time, JSON, persistent, and the envelope as
/// headers.
fn properties(message: &OutgoingMessage) -> Result<BasicProperties, PublishError> {
    let too_long = |what: &str| {
        PublishError::Refused(format!(
            "the {what} is over 255 bytes, the AMQP limit of a property"
        ))
    };
    let mut headers = FieldTable::default();
    for (name, value) in message.headers() {
        headers.insert(name.into(), text_value(value));
    }
    let mut properties = BasicProperties::default()
        .with_message_id(message.message_id.to_string().into())
        .with_type(
            ShortString::try_new(message.event_type.as_str())
                .map_err(|_| too_long("event type"))?,
        )
        .with_content_type("application/json".into())
        .with_delivery_mode(PERSISTENT)
        .with_timestamp(message.recorded_at.timestamp().max(0) as u64)
        .with_headers(headers);
    if let Some(correlation_id) = message.correlation_id {
        properties = properties.with_correlation_id(correlation_id.to_string().into());
    }
    Ok(properties)
}

#[async_trait]
impl Publisher for RabbitMqPublisher {
    fn destination(&self, message: &OutgoingMessage) -> String {
        format!(
            "exchange {} routing key {}",
            self.options.exchange,
            message.routing_key()
        )
    }

    async fn publish(&mut self, messages: &[OutgoingMessage]) -> Vec<Result<(), PublishError>> {
        if messages.is_empty() {
            return Vec::new();
        }
        let all_unavailable = |error: RabbitMqError| {
            let reason = error.to_string();
            tracing::warn!(%reason, "RabbitMQ publisher unavailable");
            let mut results = Vec::with_capacity(messages.len());
            results.push(Err(PublishError::Unavailable(Box::new(error))));
            results.extend(
                (1..messages.len()).map(|_| Err(PublishError::Unavailable(reason.clone().into()))),
            );
            results
        };
        let channel = match self.channel().await {
            Ok(channel) => channel,
            Err(error) => return all_unavailable(error),
        };
        let sent = join_all(
            messages
                .iter()
                .map(|message| self.publish_one(&channel, message)),
        );
        let results = match tokio::time::timeout(self.options.timeout, sent).await {
            Ok(results) => results,
            Err(_) => {
                self.open = None;
                return all_unavailable(RabbitMqError::Timeout {
                    operation: format!("confirm {} messages", messages.len()),
                    seconds: self.options.timeout.as_secs().max(1),
                });
            }
        };
        if !channel.status().connected() {
            // The next call opens a new connection.
            self.open = None;
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_url_or_exchange_is_refused_at_construction() {
        assert!(RabbitMqPublisher::new("not a url", PublisherOptions::default()).is_err());
        assert!(RabbitMqPublisher::new(
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            PublisherOptions::new("")
        )
        .is_err());
        assert!(RabbitMqPublisher::new(
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            PublisherOptions::new("orders")
        )
        .is_ok());
    }
}
