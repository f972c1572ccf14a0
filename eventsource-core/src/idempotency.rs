//! Deciding whether an append whose event ids are already stored is a harmless retry.

use std::collections::HashMap;

use uuid::Uuid;

use crate::error::StoreError;
use crate::event::NewEvent;
use crate::event_store::AppendResult;
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
