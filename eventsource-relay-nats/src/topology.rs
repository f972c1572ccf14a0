//! The JetStream streams a relay and an inbox need, declared when absent.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tokio::sync::watch;

use crate::error::SetupError;
use crate::subject;

/// A JetStream stream to declare: the relay's (capturing `<prefix>.>`) or an inbox's
/// dead-letter stream (capturing `<dead letter prefix>.>`).
///
/// [`ensure_stream`] creates it with these settings when no stream of its name exists, and
/// leaves an existing one as it is (its subjects, limits and retention are the operator's).
///
/// ```
/// use std::time::Duration;
/// use eventsource_relay_nats::StreamSetup;
///
/// let setup = StreamSetup::for_prefix("EVENTS", "events")
///     .with_duplicate_window(Duration::from_secs(600));
/// assert_eq!(setup.subjects, ["events.>"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSetup {
    /// The stream's name (no `.`, `*`, `>` or whitespace).
    pub name: String,
    /// The subjects it captures.
    pub subjects: Vec<String>,
    /// How long JetStream remembers a `Nats-Msg-Id` to drop a republished message (default
    /// 2 minutes, the server's default). A relay restarted after a crash republishes the
    /// messages after its checkpoint: within this window they are stored once; after it,
    /// consumers deduplicate them by message id (the inbox does).
    pub duplicate_window: Duration,
    /// The largest message the stream takes, in bytes (`None`: the server's limit). A larger
    /// message is refused for good and the relay parks it as a dead letter.
    pub max_message_size: Option<i32>,
    /// How long messages are kept (`None`: forever, the stream is bounded by the server's
    /// limits only).
    pub max_age: Option<Duration>,
}

impl StreamSetup {
    /// A file-backed stream named `name` capturing every subject under `prefix` (`<prefix>.>`).
    pub fn for_prefix(name: impl Into<String>, prefix: &str) -> Self {
        Self {
            name: name.into(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window: Duration::from_secs(120),
            max_message_size: None,
            max_age: None,
        }
    }

    /// The same stream with another duplicate window.
    pub fn with_duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// The same stream with a size limit per message, in bytes.
    pub fn with_max_message_size(mut self, bytes: i32) -> Self {
        self.max_message_size = Some(bytes);
        self
    }

    /// The same stream keeping messages for `age` only.
    pub fn with_max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    fn check(&self) -> Result<(), SetupError> {
        if self.name.is_empty()
            || self
                .name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>'))
        {
            return Err(SetupError::invalid(format!(
                "the stream name {:?} is empty or holds `.`, `*`, `>` or whitespace; choose a name like EVENTS",
                self.name
            )));
        }
        if self.subjects.is_empty() {
            return Err(SetupError::invalid(format!(
                "the stream {} captures no subject; give it at least one (for example `<prefix>.>`)",
                self.name
            )));
        }
        Ok(())
    }

    fn config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            duplicate_window: self.duplicate_window,
            max_message_size: self.max_message_size.unwrap_or(-1),
            max_age: self.max_age.unwrap_or_default(),
            ..stream::Config::default()
        }
    }
}

/// Creates the stream `setup` describes unless a stream of its name exists; returns the
/// stream's information as the server holds it (an existing stream's own settings).
///
/// What this declares: one file-backed stream with limits retention. What it never does: change
/// an existing stream, or check that an existing stream captures the subjects of `setup` (the
/// server refuses a new stream whose subjects overlap another's, with a message naming it).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use eventsource_relay_nats::{ensure_stream, StreamSetup};
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let jetstream = async_nats::jetstream::new(client);
/// ensure_stream(&jetstream, &StreamSetup::for_prefix("EVENTS", "events")).await?;
/// # Ok(()) }
/// ```
pub async fn ensure_stream(
    jetstream: &jetstream::Context,
    setup: &StreamSetup,
) -> Result<stream::Info, SetupError> {
    setup.check()?;
    let mut stream = jetstream
        .get_or_create_stream(setup.config())
        .await
        .map_err(|e| SetupError::jetstream(format!("declare the stream {}", setup.name), e))?;
    let info = stream
        .info()
        .await
        .map_err(|e| SetupError::jetstream(format!("read the stream {}", setup.name), e))?;
    Ok(info.clone())
}

/// Checks a subject prefix (`events`, `acme.orders`): one or more tokens NATS can publish to.
pub(crate) fn check_prefix(what: &str, prefix: &str) -> Result<(), SetupError> {
    subject::check(prefix).map_err(|reason| {
        SetupError::invalid(format!(
            "{what} {prefix:?} cannot start a subject: {reason}"
        ))
    })
}

/// Connects to `url`, naming the connection `name` for the server's monitoring; when given,
/// `disconnects` counts the times the connection is lost.
pub(crate) async fn connect(
    url: &str,
    name: &str,
    timeout: Duration,
    disconnects: Option<Arc<watch::Sender<u64>>>,
) -> Result<async_nats::Client, SetupError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(timeout);
    if let Some(disconnects) = disconnects {
        options = options.event_callback(move |event| {
            let disconnects = disconnects.clone();
            async move {
                if matches!(event, async_nats::Event::Disconnected) {
                    disconnects.send_modify(|count| *count += 1);
                }
            }
        });
    }
    options.connect(url).await.map_err(|e| SetupError::Connect {
        url: url.to_owned(),
        source: e.into(),
    })
}
