//! The inbox's consuming loop over a Kafka consumer group.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use eventsource_core::BoxError;
use eventsource_postgres::inbox::{
    failure_header, Disposition, Inbox, InboxHandler, IncomingMessage,
};
use eventsource_postgres::relay::header;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch, Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::error::KafkaRelayError;
use crate::topology::{bootstrap_servers, check_topic, client_config, create_topics, TopicSetup};

/// The header a dead-lettered message gets besides those of
/// [`failure_header`]: where it was read, `<topic>/<partition>/<offset>`.
pub const SOURCE_HEADER: &str = "inbox-source";

/// What a [`KafkaInbox`] reads and how it retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaInboxOptions {
    /// The topics to consume (e.g. `events.order`: see [`topic_name`](crate::topic_name)).
    pub topics: Vec<String>,
    /// The consumer group (default: the inbox's name). Consumers of one group share the
    /// topics' partitions; a stream's messages, in one partition, are handled in order.
    pub group_id: Option<String>,
    /// Appended to a topic's name to name its dead-letter topic (default `.dlq`: a message of
    /// `events.order` the handler gives up on goes to `events.order.dlq`).
    pub dead_letter_suffix: String,
    /// Where a new group starts in each partition: from the first message still in the topic
    /// (`true`, the default: nothing published before the first start is missed), or from the
    /// end (`auto.offset.reset=latest`).
    pub start_from_earliest: bool,
    /// The first wait after the database or the broker failed (default 100 ms); doubled after
    /// each further failure, up to `max_retry_backoff`.
    pub retry_backoff: Duration,
    /// The longest wait between two attempts (default 5 s).
    pub max_retry_backoff: Duration,
    /// How often the offsets of handled messages are committed (default 100 ms); zero commits
    /// after every message. Committing is asynchronous and off the handling path; the last
    /// offsets are committed synchronously at shutdown. After a crash, what was handled since
    /// the last commit comes again and is recognised as a duplicate (its handler does not run).
    pub commit_interval: Duration,
    /// How long a dead-letter message may take to be acknowledged before it is sent again
    /// (default 30 s).
    pub dead_letter_timeout: Duration,
    /// How [`KafkaInbox::ensure_topics`] creates absent topics.
    pub topic_setup: TopicSetup,
    /// Further librdkafka settings for the consumer and the dead-letter producer
    /// (`security.protocol`, `sasl.*`, `session.timeout.ms`...), applied before those the
    /// inbox relies on (`enable.auto.commit=false`, `enable.auto.offset.store=false`,
    /// `enable.idempotence=true`, `acks=all`).
    pub client_settings: Vec<(String, String)>,
}

impl KafkaInboxOptions {
    /// Options to consume `topics`, with the defaults otherwise.
    pub fn new<T: Into<String>>(topics: impl IntoIterator<Item = T>) -> Self {
        Self {
            topics: topics.into_iter().map(Into::into).collect(),
            group_id: None,
            dead_letter_suffix: ".dlq".to_owned(),
            start_from_earliest: true,
            retry_backoff: Duration::from_millis(100),
            max_retry_backoff: Duration::from_secs(5),
            commit_interval: Duration::from_millis(100),
            dead_letter_timeout: Duration::from_secs(30),
            topic_setup: TopicSetup::default(),
            client_settings: Vec::new(),
        }
    }

    /// The same options with another consumer group.
    pub fn with_group_id(mut self, group: impl Into<String>) -> Self {
        self.group_id = Some(group.into());
        self
    }

    /// The same options with a librdkafka setting added.
    pub fn with_client_setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.client_settings.push((key.into(), value.into()));
        self
    }
}

/// What a [`KafkaInbox`] has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaInboxStatus {
    /// Messages handled (the handler's transaction committed).
    pub handled: u64,
    /// Redeliveries of handled messages, committed without running the handler.
    pub duplicates: u64,
    /// Messages sent to their dead-letter topic.
    pub dead_lettered: u64,
    /// Why the inbox is waiting to retry, while it is (the database or the broker is down).
    pub retrying: Option<String>,
}

/// Consumes Kafka topics into an [`Inbox`]: each message handled exactly once in effect.
///
/// The loop, per message, in partition order:
/// 1. [`Inbox::receive`] records the message id and runs the handler in one PostgreSQL
///    transaction (a redelivered id is not handled again);
/// 2. on `Handled` or `Duplicate`, the offset after the message is committed for the group
///    (with those of the other messages handled within
///    [`commit_interval`](KafkaInboxOptions::commit_interval));
/// 3. on `Failed` (the handler failed on every attempt), the message is produced to
///    `<topic><dead_letter_suffix>` with the same key, value and headers plus
///    `inbox-error`, `inbox-attempts`, `inbox` and `inbox-source` (see
///    [`failure_header`]); once that is acknowledged, its offset is committed;
/// 4. when the inbox itself fails (the database is unreachable), nothing is committed: the
///    message is tried again after a backoff, and if this process dies meanwhile, the group
///    delivers it again from the last committed offset.
///
/// Kafka has no per-message acknowledgement: a committed offset covers every message before it
/// in its partition, which is why a partition's messages are handled one after another (and
/// the partitions concurrently, one worker each).
/// Offsets are committed asynchronously every `commit_interval` and synchronously at shutdown;
/// an offset lost in a crash only causes redeliveries, which the inbox recognises. Broker
/// outages are waited out (librdkafka reconnects by itself).
pub struct KafkaInbox {
    servers: String,
    inbox: Inbox,
    options: KafkaInboxOptions,
    group: String,
    status: watch::Sender<KafkaInboxStatus>,
}

impl KafkaInbox {
    /// An inbox reading `options.topics` from the cluster at `url` (`host:port[,host:port]`)
    /// into `inbox`. Nothing connects before [`run`](Self::run) or
    /// [`ensure_topics`](Self::ensure_topics).
    pub fn new(
        url: &str,
        inbox: Inbox,
        options: KafkaInboxOptions,
    ) -> Result<Self, KafkaRelayError> {
        let servers = bootstrap_servers(url)?;
        let config = |problem: String| KafkaRelayError::Config { problem };
        if options.topics.is_empty() {
            return Err(config(
                "KafkaInboxOptions::topics is empty; name at least one topic to consume".to_owned(),
            ));
        }
        for topic in &options.topics {
            check_topic(topic).map_err(config)?;
            check_topic(&format!("{topic}{}", options.dead_letter_suffix)).map_err(|problem| {
                config(format!("the dead-letter topic of `{topic}`: {problem}"))
            })?;
        }
        let group = options
            .group_id
            .clone()
            .unwrap_or_else(|| inbox.name().to_owned());
        if group.is_empty() {
            return Err(config(
                "the consumer group is empty; name the inbox or set KafkaInboxOptions::group_id"
                    .to_owned(),
            ));
        }
        let (status, _) = watch::channel(KafkaInboxStatus::default());
        Ok(Self {
            servers,
            inbox,
            options,
            group,
            status,
        })
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The dead-letter topic of `topic`: `<topic><dead_letter_suffix>`.
    pub fn dead_letter_topic(&self, topic: &str) -> String {
        format!("{topic}{}", self.options.dead_letter_suffix)
    }

    /// Watches what the inbox has done.
    pub fn status(&self) -> watch::Receiver<KafkaInboxStatus> {
        self.status.subscribe()
    }

    /// Creates, when absent, the consumed topics and their dead-letter topics, as
    /// [`KafkaInboxOptions::topic_setup`] says. The consumer group needs no declaration: Kafka
    /// makes it when the first consumer joins.
    pub async fn ensure_topics(&self) -> Result<(), KafkaRelayError> {
        let mut topics = self.options.topics.clone();
        topics.extend(
            self.options
                .topics
                .iter()
                .map(|t| self.dead_letter_topic(t)),
        );
        create_topics(
            &self.servers,
            &self.options.client_settings,
            &topics,
            &self.options.topic_setup,
        )
        .await
    }

    /// Consumes until `shutdown` is cancelled, handling each message with `handler`.
    ///
    /// Returns `Ok` after a shutdown (the message in hand, if any, is finished first unless
    /// the inbox is waiting to retry it); fails only when the clients cannot be created or
    /// subscribed (their settings are wrong). The dead-letter topics must exist, or the broker
    /// must create them: see [`ensure_topics`](Self::ensure_topics).
    pub async fn run<H: InboxHandler + ?Sized>(
        &self,
        handler: &H,
        shutdown: CancellationToken,
    ) -> Result<(), KafkaRelayError> {
        let producer = self.dead_letter_producer()?;
        loop {
            let consumer = Arc::new(self.consumer()?);
            let ended = self.consume(&consumer, &producer, handler, &shutdown).await;
            // Closing a consumer blocks (it leaves the group): not on the runtime's threads.
            let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
            if ended == Ended::Shutdown {
                return Ok(());
            }
        }
    }

    fn consumer(&self) -> Result<StreamConsumer, KafkaRelayError> {
        let mut config = client_config(&self.servers, &self.options.client_settings);
        config
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                if self.options.start_from_earliest {
                    "earliest"
                } else {
                    "latest"
                },
            );
        let consumer: StreamConsumer =
            config.create().map_err(|source| KafkaRelayError::Client {
                client: "consumer",
                brokers: self.servers.clone(),
                source: Box::new(source),
            })?;
        let topics: Vec<&str> = self.options.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|source| KafkaRelayError::Subscribe {
                group: self.group.clone(),
                topics: self.options.topics.clone(),
                source: Box::new(source),
            })?;
        Ok(consumer)
    }

    fn dead_letter_producer(&self) -> Result<FutureProducer, KafkaRelayError> {
        let mut config = client_config(&self.servers, &self.options.client_settings);
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                self.options.dead_letter_timeout.as_millis().to_string(),
            );
        config.create().map_err(|source| KafkaRelayError::Client {
            client: "dead-letter producer",
            brokers: self.servers.clone(),
            source: Box::new(source),
        })
    }

    /// One consumer's life: until shutdown, or until it fails fatally.
    ///
    /// Messages are handed to one worker per partition, so that partitions are handled
    /// concurrently and each partition's messages one after another, in order. The workers
    /// are futures of this task (they borrow the handler); at most [`MAX_BUFFERED`] received
    /// messages wait for their worker, then the consumer is not read until some are done.
    async fn consume<H: InboxHandler + ?Sized>(
        &self,
        consumer: &Arc<StreamConsumer>,
        producer: &FutureProducer,
        handler: &H,
        shutdown: &CancellationToken,
    ) -> Ended {
        // The offset after the last message done with, per partition: all of it is committed
        // at shutdown, and what changed since the last commit every `commit_interval`.
        let done: Mutex<HashMap<(String, i32), i64>> = Mutex::new(HashMap::new());
        let uncommitted = AtomicBool::new(false);
        let room = Semaphore::new(MAX_BUFFERED);
        let mut queues: HashMap<
            (String, i32),
            mpsc::UnboundedSender<(OwnedMessage, SemaphorePermit<'_>)>,
        > = HashMap::new();
        let mut workers = FuturesUnordered::new();
        let mut commit_tick = tokio::time::interval(
            self.options
                .commit_interval
                .clamp(Duration::from_millis(1), MAX_COMMIT_TICK),
        );
        let mut last_commit = tokio::time::Instant::now();
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = Backoff::new(&self.options);
        let ended = loop {
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ended::Shutdown,
                Some(()) = workers.next(), if !workers.is_empty() => continue,
                // Also a fallback wakeup: rdkafka's stream can miss librdkafka's "queue no
                // longer empty" signal (rust-rdkafka issue #665) and then waits for its own
                // fallback, half of max.poll.interval.ms (150 s by default); a new `recv` every
                // tick reads the queue again.
                _ = commit_tick.tick() => {
                    if last_commit.elapsed() >= self.options.commit_interval
                        && uncommitted.swap(false, Ordering::Relaxed)
                    {
                        self.commit(consumer, &lock(&done), CommitMode::Async);
                        last_commit = tokio::time::Instant::now();
                    }
                    continue;
                }
                (permit, received) = async { (room.acquire().await, consumer.recv().await) } => (permit, received),
            };
            let (permit, received) = received;
            let message = match (permit, received) {
                (Ok(permit), Ok(message)) => (message.detach(), permit),
                (Err(_), _) => break Ended::Shutdown,
                (_, Err(error)) => {
                    if let Some((code, reason)) = consumer.client().fatal_error() {
                        tracing::error!(group = %self.group, %code, reason, "the Kafka consumer failed fatally; making a new one");
                        break Ended::Failed;
                    }
                    self.retrying(format!(
                        "the Kafka consumer of group `{}` failed: {error}; it reconnects by itself",
                        self.group
                    ));
                    if !backoff.wait(shutdown).await {
                        break Ended::Shutdown;
                    }
                    continue;
                }
            };
            backoff.reset();
            let partition = (message.0.topic().to_owned(), message.0.partition());
            let queue = queues.entry(partition.clone()).or_insert_with(|| {
                let (queue, mut messages) = mpsc::unbounded_channel();
                let (done, uncommitted) = (&done, &uncommitted);
                workers.push(async move {
                    while let Some((message, permit)) = messages.recv().await {
                        if shutdown.is_cancelled() {
                            return;
                        }
                        let ended = self.handle(&message, producer, handler, shutdown).await;
                        drop(permit);
                        if ended == Ended::Shutdown {
                            return;
                        }
                        lock(done).insert(
                            (message.topic().to_owned(), message.partition()),
                            message.offset() + 1,
                        );
                        if self.options.commit_interval.is_zero() {
                            self.commit(consumer, &lock(done), CommitMode::Async);
                        } else {
                            uncommitted.store(true, Ordering::Relaxed);
                        }
                    }
                });
                queue
            });
            // The worker only ends when its queue is dropped, or at shutdown.
            let _ = queue.send(message);
        };
        // Each worker finishes the message in hand (unless it waits to retry it), then stops.
        drop(queues);
        while workers.next().await.is_some() {}
        drop(workers);
        let done = std::mem::take(&mut *lock(&done));
        if !done.is_empty() {
            // Synchronously, off the runtime's threads: the last offsets must not be lost.
            let (consumer, group) = (consumer.clone(), self.group.clone());
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(error) = consumer.commit(&offsets(&done), CommitMode::Sync) {
                    tracing::warn!(%group, %error, "could not commit the handled offsets at shutdown; their messages will be delivered again and recognised as handled");
                }
            })
            .await;
        }
        ended
    }

    /// Commits `done` for the group.
    fn commit(
        &self,
        consumer: &StreamConsumer,
        done: &HashMap<(String, i32), i64>,
        mode: CommitMode,
    ) {
        if let Err(error) = consumer.commit(&offsets(done), mode) {
            tracing::warn!(group = %self.group, %error, "could not commit the offsets; their messages will be delivered again and recognised as handled");
        }
    }

    /// Handles one message until it is handled, recognised, or dead-lettered; only a shutdown
    /// while waiting to retry interrupts it (then nothing is committed).
    async fn handle<H: InboxHandler + ?Sized>(
        &self,
        message: &OwnedMessage,
        producer: &FutureProducer,
        handler: &H,
        shutdown: &CancellationToken,
    ) -> Ended {
        let incoming = incoming_message(message);
        let mut backoff = Backoff::new(&self.options);
        loop {
            match self.inbox.receive(handler, &incoming).await {
                Ok(Disposition::Handled) => {
                    self.status.send_modify(|s| {
                        s.handled += 1;
                        s.retrying = None;
                    });
                    return Ended::Done;
                }
                Ok(Disposition::Duplicate) => {
                    self.status.send_modify(|s| {
                        s.duplicates += 1;
                        s.retrying = None;
                    });
                    return Ended::Done;
                }
                Ok(Disposition::Failed { error, attempts }) => {
                    return self
                        .dead_letter(message, &incoming, producer, &error, attempts, shutdown)
                        .await;
                }
                Err(error) => {
                    self.retrying(error.to_string());
                    if !backoff.wait(shutdown).await {
                        return Ended::Shutdown;
                    }
                }
            }
        }
    }

    /// Produces `message` to its dead-letter topic with the failure in its headers, until
    /// the broker acknowledges it.
    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        incoming: &IncomingMessage,
        producer: &FutureProducer,
        error: &BoxError,
        attempts: u32,
        shutdown: &CancellationToken,
    ) -> Ended {
        let topic = self.dead_letter_topic(message.topic());
        let source = format!(
            "{}/{}/{}",
            message.topic(),
            message.partition(),
            message.offset()
        );
        let error = error.to_string();
        let attempts = attempts.to_string();
        tracing::error!(inbox = %self.inbox.name(), message_id = %incoming.message_id, %error, %topic, "the handler gave up on a message; dead-lettering it");
        let mut backoff = Backoff::new(&self.options);
        loop {
            let mut headers = OwnedHeaders::new();
            if let Some(original) = message.headers() {
                for h in original.iter() {
                    headers = headers.insert(Header {
                        key: h.key,
                        value: h.value,
                    });
                }
            }
            for (key, value) in [
                (failure_header::ERROR, error.as_str()),
                (failure_header::ATTEMPTS, attempts.as_str()),
                (failure_header::INBOX, self.inbox.name()),
                (SOURCE_HEADER, source.as_str()),
            ] {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&topic).headers(headers);
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            match producer
                .send(record, Timeout::After(self.options.dead_letter_timeout))
                .await
            {
                Ok(_) => {
                    self.status.send_modify(|s| {
                        s.dead_lettered += 1;
                        s.retrying = None;
                    });
                    return Ended::Done;
                }
                Err((failure, _)) => {
                    self.retrying(dead_letter_failure(&topic, &failure));
                    if !backoff.wait(shutdown).await {
                        return Ended::Shutdown;
                    }
                }
            }
        }
    }

    fn retrying(&self, reason: String) {
        tracing::warn!(inbox = %self.inbox.name(), group = %self.group, %reason, "retrying after a backoff");
        self.status.send_modify(|s| s.retrying = Some(reason));
    }
}

/// The longest time between two reads of the consumer's queue while messages may be waiting.
const MAX_COMMIT_TICK: Duration = Duration::from_millis(100);

/// Received messages waiting for their partition's worker, at most.
const MAX_BUFFERED: usize = 1_000;

/// The map behind `mutex`, even if a panic poisoned it (it is only ever replaced whole).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `done` as a partition list.
fn offsets(done: &HashMap<(String, i32), i64>) -> TopicPartitionList {
    let mut list = TopicPartitionList::with_capacity(done.len());
    for ((topic, partition), offset) in done {
        // Only fails for an offset librdkafka does not know, which `Offset::Offset` is not.
        let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    list
}

fn dead_letter_failure(topic: &str, error: &KafkaError) -> String {
    format!("could not produce to the dead-letter topic `{topic}`: {error}; create the topic (KafkaInbox::ensure_topics) or check the broker; the message stays uncommitted until it is dead-lettered")
}

/// The inbox's view of a Kafka message: the message id from the header `message-id` (else
/// `<topic>/<partition>/<offset>`, which names the record for good), the topic as subject,
/// every header whose value is UTF-8 text, the value as payload.
pub fn incoming_message(message: &impl Message) -> IncomingMessage {
    let mut headers = BTreeMap::new();
    if let Some(all) = message.headers() {
        for h in all.iter() {
            if let Some(Ok(value)) = h.value.map(std::str::from_utf8) {
                headers.insert(h.key.to_owned(), value.to_owned());
            }
        }
    }
    let message_id = headers.get(header::MESSAGE_ID).cloned().unwrap_or_else(|| {
        format!(
            "{}/{}/{}",
            message.topic(),
            message.partition(),
            message.offset()
        )
    });
    IncomingMessage {
        message_id,
        subject: message.topic().to_owned(),
        headers,
        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
    }
}

/// How a step of the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The message is done with: commit it.
    Done,
    /// Shutdown came: commit nothing more.
    Shutdown,
    /// The consumer failed for good: make a new one.
    Failed,
}

/// Exponential backoff, cut short by shutdown.
struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(options: &KafkaInboxOptions) -> Self {
        Self {
            first: options.retry_backoff,
            max: options.max_retry_backoff,
            next: options.retry_backoff,
        }
    }

    fn reset(&mut self) {
        self.next = self.first;
    }

    /// Waits; `false` when shutdown came first.
    async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = shutdown.cancelled() => false,
        }
    }
}
