//! Test support for relays and inboxes: writers that append while a relay runs, and a check of
//! what a deduplicating consumer received against the truth read by plain SQL.
//!
//! Shared by every broker crate's completeness, crash and restart tests, so that each broker is
//! held to the same rule: every committed event, exactly once after deduplication by message
//! id, each stream's events in version order.

use std::collections::{BTreeMap, HashMap, HashSet};

use eventsource_core::{
    EventAppender, EventMetadata, ExpectedVersion, NewEvent, StoreError, StreamId,
};
use sqlx::Row;
use uuid::Uuid;

use crate::error::backend;
use crate::store::PostgresStore;

/// An event as the store holds it, read by plain SQL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoredMessage {
    /// Its id (a relay's message id).
    pub event_id: Uuid,
    /// Its stream, as a relay names it (`category-id`).
    pub stream: String,
    /// Its version.
    pub version: u64,
}

/// A message as a consumer received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The message id.
    pub message_id: String,
    /// The header `stream`.
    pub stream: String,
    /// The header `stream-version`.
    pub version: u64,
}

/// What is wrong with a delivery; empty when it is complete and ordered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Committed events never received.
    pub missing: Vec<StoredMessage>,
    /// Received messages that name no committed event.
    pub unknown: Vec<String>,
    /// Received messages whose stream or version differs from the committed event's.
    pub mislabelled: Vec<String>,
    /// Streams whose first receipts (after deduplication) are not in version order.
    pub out_of_order: Vec<String>,
    /// Messages received more than once (allowed: consumers deduplicate).
    pub duplicates: usize,
}

impl DeliveryReport {
    /// Every committed event once after deduplication, each stream in version order.
    pub fn is_complete_and_ordered(&self) -> bool {
        self.missing.is_empty()
            && self.unknown.is_empty()
            && self.mislabelled.is_empty()
            && self.out_of_order.is_empty()
    }
}

/// Every event in `store`, by plain SQL.
pub async fn stored_messages(store: &PostgresStore) -> Result<Vec<StoredMessage>, StoreError> {
    let rows = sqlx::query(
        "SELECT event_id, category || '-' || stream_id AS stream, version FROM eventsource.events ORDER BY position",
    )
    .fetch_all(store.pool())
    .await
    .map_err(|e| backend("read the stored events", e))?;
    rows.iter()
        .map(|row| {
            let version: i64 = row
                .try_get("version")
                .map_err(|e| backend("read the stored events", e))?;
            Ok(StoredMessage {
                event_id: row
                    .try_get("event_id")
                    .map_err(|e| backend("read the stored events", e))?,
                stream: row
                    .try_get("stream")
                    .map_err(|e| backend("read the stored events", e))?,
                version: version as u64,
            })
        })
        .collect()
}

/// Checks `received` (in arrival order) against `stored`.
pub fn check_delivery(stored: &[StoredMessage], received: &[ReceivedMessage]) -> DeliveryReport {
    let by_id: HashMap<String, &StoredMessage> =
        stored.iter().map(|m| (m.event_id.to_string(), m)).collect();
    let mut report = DeliveryReport::default();
    let mut seen = HashSet::new();
    let mut last_version: BTreeMap<&str, u64> = BTreeMap::new();
    for message in received {
        if !seen.insert(message.message_id.as_str()) {
            report.duplicates += 1;
            continue;
        }
        let Some(truth) = by_id.get(&message.message_id) else {
            report.unknown.push(message.message_id.clone());
            continue;
        };
        if truth.stream != message.stream || truth.version != message.version {
            report.mislabelled.push(message.message_id.clone());
        }
        let last = last_version.entry(truth.stream.as_str()).or_insert(0);
        if truth.version != *last + 1 {
            report.out_of_order.push(format!(
                "{}: version {} after {}",
                truth.stream, truth.version, last
            ));
        }
        *last = (*last).max(truth.version);
    }
    report.missing = stored
        .iter()
        .filter(|m| !seen.contains(m.event_id.to_string().as_str()))
        .cloned()
        .collect();
    report
}

/// `writers` tasks append concurrently, each to `streams` streams of its own in `category`
/// (`<category>-w<writer>s<stream>`), `events` events per stream, one or two events per
/// append, round-robin over its streams. Returns how many events were appended.
pub async fn write_concurrently(
    store: &PostgresStore,
    category: &str,
    writers: usize,
    streams: usize,
    events: usize,
) -> Result<usize, StoreError> {
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let store = store.clone();
        let category = category.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut appended = 0;
            let mut versions = vec![0u64; streams];
            while versions.iter().any(|v| (*v as usize) < events) {
                for (stream, version) in versions.iter_mut().enumerate() {
                    let left = events - *version as usize;
                    if left == 0 {
                        continue;
                    }
                    let count = left.min(1 + (*version as usize + writer) % 2);
                    let id = StreamId::new(category.as_str(), format!("w{writer}s{stream}"))?;
                    let batch = (0..count)
                        .map(|i| {
                            NewEvent::new(
                                "Ticked",
                                1,
                                serde_json::json!({ "n": *version + i as u64 + 1 }),
                                EventMetadata {
                                    correlation_id: Some(Uuid::now_v7()),
                                    ..EventMetadata::default()
                                },
                            )
                        })
                        .collect();
                    let expected = if *version == 0 {
                        ExpectedVersion::NoStream
                    } else {
                        ExpectedVersion::Exact(eventsource_core::StreamVersion::new(*version)?)
                    };
                    store.append(&id, expected, batch).await?;
                    *version += count as u64;
                    appended += count;
                }
            }
            Ok::<usize, StoreError>(appended)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.map_err(|e| StoreError::Corrupt {
            what: format!("a writer task panicked: {e}"),
        })??;
    }
    Ok(total)
}
