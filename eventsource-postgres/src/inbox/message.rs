//! A message as the inbox receives it from a broker.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::relay::header;

/// A message received from a broker, handed to an [`InboxHandler`](super::InboxHandler).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingMessage {
    /// The message id the inbox deduplicates by (the broker's message id, which a relay sets to
    /// the event id).
    pub message_id: String,
    /// Where it came from: the routing key, subject or topic.
    pub subject: String,
    /// The message's text headers (a relay's envelope: see [`header`]).
    pub headers: BTreeMap<String, String>,
    /// The body.
    pub payload: Vec<u8>,
}

impl IncomingMessage {
    /// The header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The integration event's name (header `event-type`).
    pub fn event_type(&self) -> Option<&str> {
        self.header(header::EVENT_TYPE)
    }

    /// The correlation id (header `correlation-id`), if present and a UUID.
    pub fn correlation_id(&self) -> Option<Uuid> {
        self.header(header::CORRELATION_ID)?.parse().ok()
    }

    /// The causation id (header `causation-id`), if present and a UUID.
    pub fn causation_id(&self) -> Option<Uuid> {
        self.header(header::CAUSATION_ID)?.parse().ok()
    }

    /// The body decoded from JSON.
    ///
    /// ```
    /// use eventsource_postgres::inbox::IncomingMessage;
    /// #[derive(serde::Deserialize)]
    /// struct OrderConfirmed { order_id: String }
    /// let message = IncomingMessage {
    ///     message_id: "0192f7c4-0000-7000-8000-000000000001".into(),
    ///     subject: "order.OrderConfirmed".into(),
    ///     headers: Default::default(),
    ///     payload: br#"{"order_id":"o-1"}"#.to_vec(),
    /// };
    /// let body: OrderConfirmed = message.json()?;
    /// assert_eq!(body.order_id, "o-1");
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }
}
