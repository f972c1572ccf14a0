//! Deciding whether an append whose event ids are already stored is a harmless retry.

use std::collections::HashMap;

use uuid::Uuid;

use crate::error::StoreError;
use crate::event::NewEvent;
use crate::event_store::{AppendResult, StreamAppend};
use crate::position::FeedPosition;
use crate::stream_id::StreamId;
use crate::version::StreamVersion;

/// Where an event id is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEventLocation {
    /// The stream holding it.
    pub stream_id: StreamId,
    /// Its version there.
    pub version: StreamVersion,
    /// Its feed position.
    pub position: FeedPosition,
}

/// Decides an append some of whose event ids are already stored (`stored` maps each stored id
/// of the append to where it is).
///
/// The same events appended to the same stream, in the same order and at consecutive versions,
/// are a retry after a lost reply: the result reports where they are, with
/// `already_stored = true`, and nothing is written again. Anything else reuses ids and is
/// refused with [`StoreError::EventIdReused`].
pub fn replayed_append(
    stream: &StreamId,
    events: &[NewEvent],
    stored: &HashMap<Uuid, StoredEventLocation>,
) -> Result<AppendResult, StoreError> {
    let reused = |event_id: Uuid, at: &StoredEventLocation| StoreError::EventIdReused {
        event_id,
        stream: stream.clone(),
        stored_in: at.stream_id.clone(),
        version: at.version,
    };
    let mut positions = Vec::with_capacity(events.len());
    let mut previous: Option<StreamVersion> = None;
    for event in events {
        let Some(at) = stored.get(&event.event_id) else {
            // Some ids of this append are stored and this one is not: a mix of old and new.
            let (id, at) = events
                .iter()
                .find_map(|e| stored.get(&e.event_id).map(|at| (e.event_id, at)))
                .ok_or_else(|| StoreError::Corrupt {
                    what: "an append was judged a retry without any stored event id".into(),
                })?;
            return Err(reused(id, at));
        };
        let in_order = previous.is_none_or(|p| p.next() == Some(at.version));
        if at.stream_id != *stream || !in_order {
            return Err(reused(event.event_id, at));
        }
        previous = Some(at.version);
        positions.push(at.position);
    }
    Ok(AppendResult {
        stream_version: previous.unwrap_or(StreamVersion::INITIAL),
        positions,
        already_stored: true,
    })
}

/// Decides an append to several streams some of whose event ids are already stored (`stored`
/// maps each stored id of the append to where it is), as [`replayed_append`] does for one
/// stream: the very same append again (every stream's events stored, each in its stream, in
/// order) is a retry and reports where they are, with `already_stored = true` for each stream
/// (a stream without events reports `current(stream)`); anything else is refused with
/// [`StoreError::EventIdReused`].
pub fn replayed_multi_append(
    appends: &[StreamAppend],
    stored: &HashMap<Uuid, StoredEventLocation>,
    current: impl Fn(&StreamId) -> StreamVersion,
) -> Result<Vec<AppendResult>, StoreError> {
    let Some((some_id, some_at)) = appends
        .iter()
        .flat_map(|a| &a.events)
        .find_map(|e| stored.get(&e.event_id).map(|at| (e.event_id, at)))
    else {
        return Err(StoreError::Corrupt {
            what: "an append was judged a retry without any stored event id".into(),
        });
    };
    appends
        .iter()
        .map(|append| {
            if append.events.is_empty() {
                return Ok(AppendResult {
                    stream_version: current(&append.stream),
                    positions: Vec::new(),
                    already_stored: true,
                });
            }
            if !append
                .events
                .iter()
                .any(|e| stored.contains_key(&e.event_id))
            {
                // Another stream's events are stored and this one's are not: not a retry.
                return Err(StoreError::EventIdReused {
                    event_id: some_id,
                    stream: append.stream.clone(),
                    stored_in: some_at.stream_id.clone(),
                    version: some_at.version,
                });
            }
            replayed_append(&append.stream, &append.events, stored)
        })
        .collect()
}
