//! SHIM (process-managers branch only): the shape of idempotent commands, until the real
//! `CommandContext::with_command_id` lands on main. Removed at that merge.

use futures::TryStreamExt;
use uuid::Uuid;

use crate::aggregate::Aggregate;
use crate::command_context::CommandContext;
use crate::event::NewEvent;
use crate::event_store::StreamReader;
use crate::repository::{AppendedEvent, CommandError};
use crate::stream_id::StreamId;
use crate::version::StreamVersion;

/// The events of an earlier run of `ctx.command_id` on `stream`, if there was one.
#[allow(clippy::type_complexity)]
pub(crate) async fn previous_run<A: Aggregate, S: StreamReader>(
    store: &S,
    stream: &StreamId,
    ctx: &CommandContext,
) -> Result<Option<(Vec<A::Event>, Vec<AppendedEvent>)>, CommandError<A::Error>> {
    let mut events = store.read_stream(stream, StreamVersion::FIRST);
    let mut found = Vec::new();
    let mut appended = Vec::new();
    while let Some(recorded) = events.try_next().await? {
        if recorded.metadata.causation_id == Some(ctx.command_id) {
            found.push(recorded.decode()?);
            appended.push(AppendedEvent {
                event_id: recorded.event_id,
                version: recorded.version,
                position: recorded.position,
            });
        }
    }
    Ok((!appended.is_empty()).then_some((found, appended)))
}

/// Event ids derived from the command id.
pub(crate) fn deterministic_ids(batch: &mut [NewEvent], command_id: Uuid) {
    for (index, event) in batch.iter_mut().enumerate() {
        event.event_id = Uuid::new_v5(&command_id, format!("event/{index}").as_bytes());
    }
}
