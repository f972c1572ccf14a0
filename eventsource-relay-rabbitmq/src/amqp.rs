//! The small pieces of AMQP both sides share: the URL, connecting, names, declarations, and
//! header tables.

use std::collections::BTreeMap;
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use lapin::options::ExchangeDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::error::RabbitMqError;

/// Parses `url`, naming it without its password when it is not valid.
pub(crate) fn parse_url(url: &str) -> Result<AMQPUri, RabbitMqError> {
    AMQPUri::from_str(url).map_err(|problem| RabbitMqError::InvalidUrl {
        url: redact(url),
        problem,
    })
}

/// `url` with the password between `:` and `@` replaced.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// `name` as an AMQP short string (an exchange, queue or routing key: at most 255 bytes).
pub(crate) fn short(what: &str, name: &str) -> Result<ShortString, RabbitMqError> {
    ShortString::try_new(name).map_err(|_| RabbitMqError::Misconfigured {
        problem: format!(
            "the {what} {name:?} is {} bytes long; AMQP allows at most 255",
            name.len()
        ),
    })
}

/// Checks a name the user gave: not empty, at most 255 bytes.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), RabbitMqError> {
    if name.is_empty() {
        return Err(RabbitMqError::Misconfigured {
            problem: format!("the {what} is empty; give it a name"),
        });
    }
    short(what, name).map(|_| ())
}

/// Runs `operation`, failing with [`RabbitMqError::Timeout`] after `limit`.
pub(crate) async fn within<T>(
    limit: Duration,
    operation: &str,
    future: impl Future<Output = Result<T, RabbitMqError>>,
) -> Result<T, RabbitMqError> {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| {
            Err(RabbitMqError::Timeout {
                operation: operation.to_owned(),
                seconds: limit.as_secs().max(1),
            })
        })
}

/// Opens a connection named `name` (it shows in `rabbitmqctl list_connections`).
pub(crate) async fn connect(
    uri: &AMQPUri,
    name: &str,
    limit: Duration,
) -> Result<Connection, RabbitMqError> {
    let target = format!(
        "connect to RabbitMQ at {}:{}",
        uri.authority.host, uri.authority.port
    );
    within(limit, &target, async {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        Connection::connect_uri(uri.clone(), properties)
            .await
            .map_err(|e| RabbitMqError::unavailable(&target, e))
    })
    .await
}

/// Declares `exchange` as a durable topic exchange, unless it exists with these settings.
pub(crate) async fn declare_topic_exchange(
    channel: &Channel,
    exchange: &str,
) -> Result<(), RabbitMqError> {
    channel
        .exchange_declare(
            short("exchange", exchange)?,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            RabbitMqError::declaration(
                format!("declare the durable topic exchange `{exchange}`"),
                e,
            )
        })
}

/// A header value as text, when it has a text form (strings, numbers, booleans).
pub(crate) fn header_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        _ => return None,
    })
}

/// The text headers of a table (values without a text form, such as RabbitMQ's `x-death`
/// arrays, are left out).
pub(crate) fn text_headers(table: Option<&FieldTable>) -> BTreeMap<String, String> {
    table
        .map(|table| {
            table
                .inner()
                .iter()
                .filter_map(|(name, value)| {
                    header_text(value).map(|text| (name.as_str().to_owned(), text))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A text header value.
pub(crate) fn text_value(value: impl Into<String>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_named_without_its_password() {
        assert_eq!(
            redact("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(redact("amqp://host/%2f"), "amqp://host/%2f");
    }

    #[test]
    fn names_longer_than_255_bytes_are_refused() {
        assert!(check_name("queue", &"q".repeat(255)).is_ok());
        assert!(check_name("queue", &"q".repeat(256)).is_err());
        assert!(check_name("queue", "").is_err());
    }
}
