//! The context a command runs in, from which the metadata of its events is derived.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::event::RecordedEvent;
use crate::metadata::EventMetadata;
use crate::stream_id::StreamId;

/// Who sent a command and as part of what: the source of every produced event's metadata.
///
/// Each event a command produces gets `causation_id = command_id`, the context's
/// `correlation_id`, its actor and headers.
///
/// ```
/// use eventsource_core::CommandContext;
/// let ctx = CommandContext::new().with_actor("alice").with_header("tenant", "acme");
/// let meta = ctx.metadata();
/// assert_eq!(meta.causation_id, Some(ctx.command_id));
/// assert_eq!(meta.correlation_id, Some(ctx.correlation_id));
/// assert_eq!(meta.actor.as_deref(), Some("alice"));
/// ```
///
/// # Idempotent commands
///
/// A caller that may send the same command more than once (an HTTP handler retrying a request,
/// a process manager re-issuing a command after a crash) gives the command its id with
/// [`with_command_id`](Self::with_command_id). The events such a command produces get
/// deterministic ids ([`event_id`](Self::event_id)), and
/// [`Repository::execute`](crate::Repository::execute) returns the first run's outcome instead of
/// running it twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandContext {
    /// This command's id: the causation id of the events it produces. A fresh UUID v7 unless
    /// the caller gave it ([`with_command_id`](Self::with_command_id)).
    pub command_id: Uuid,
    /// The correlation id carried along the whole chain.
    pub correlation_id: Uuid,
    /// Who acted.
    pub actor: Option<String>,
    /// Free headers copied onto every produced event.
    pub headers: BTreeMap<String, String>,
    /// Whether the caller gave `command_id` (and may send the command again).
    id_given: bool,
}

impl CommandContext {
    /// A new command that starts its own correlation chain.
    pub fn new() -> Self {
        let command_id = Uuid::now_v7();
        Self {
            command_id,
            correlation_id: command_id,
            actor: None,
            headers: BTreeMap::new(),
            id_given: false,
        }
    }

    /// The same context for a command whose id the caller gives: the command may be sent again
    /// (a retried request, a process manager resuming after a crash), and every run must have
    /// the effect of one.
    ///
    /// - The events it produces get deterministic ids (see [`event_id`](Self::event_id)), so a
    ///   second run that gets as far as appending appends nothing twice: the store recognises
    ///   the ids.
    /// - [`Repository::execute`](crate::Repository::execute) first looks for the events this
    ///   command id already caused in the stream and, if there are any, returns that run's
    ///   outcome without deciding or appending again.
    ///
    /// Derive the id from what makes the command unique (a request id, or a process manager's
    /// instance, trigger event and step, with [`Uuid::new_v5`]); a fresh random id makes every
    /// send a new command. The correlation id is left as it is: when this context started its
    /// own chain ([`new`](Self::new)), join the caller's with
    /// [`with_correlation_id`](Self::with_correlation_id).
    ///
    /// ```
    /// use eventsource_core::{CommandContext, StreamId};
    /// use uuid::Uuid;
    /// let request = Uuid::parse_str("0191e0a4-5c1e-7c3e-9d2b-4f6a8b0c1d2e")?;
    /// let ctx = CommandContext::new().with_command_id(request);
    /// let again = CommandContext::new().with_command_id(request);
    /// let stream = StreamId::new("order", "o-1")?;
    /// assert!(ctx.is_command_id_given());
    /// assert!(!CommandContext::new().is_command_id_given());
    /// assert!(!ctx.next_command().is_command_id_given()); // the next command is another one
    /// assert_eq!(ctx.metadata().causation_id, Some(request));
    /// // The same command produces the same event ids, however often it is sent.
    /// assert_eq!(ctx.event_id(&stream, 0), again.event_id(&stream, 0));
    /// assert_ne!(ctx.event_id(&stream, 0), ctx.event_id(&stream, 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_command_id(mut self, command_id: Uuid) -> Self {
        self.command_id = command_id;
        self.id_given = true;
        self
    }

    /// Whether the caller gave the command id ([`with_command_id`](Self::with_command_id)):
    /// the command is idempotent.
    pub fn is_command_id_given(&self) -> bool {
        self.id_given
    }

    /// The id of the event at `index` (from 0) among those this command produces in `stream`.
    ///
    /// For a command whose id was given: `Uuid::new_v5(&command_id, "{category}/{id}/{index}")`
    /// (a category has no `/`, so no two streams share a name), the same on every run, in
    /// every process. Otherwise a fresh UUID v7.
    ///
    /// The rule makes a re-run harmless: a process manager that re-issues a command after a
    /// crash produces the same event ids, and the store's idempotent append stores nothing
    /// twice (a re-run that decided other events is refused with
    /// [`StoreError::EventIdReused`](crate::StoreError::EventIdReused) rather than stored).
    /// The stream is part of the name so that one command id may produce events in several
    /// streams (a [`UnitOfWork`](crate::UnitOfWork)).
    pub fn event_id(&self, stream: &StreamId, index: usize) -> Uuid {
        if self.id_given {
            let name = format!("{}/{}/{index}", stream.category(), stream.id());
            Uuid::new_v5(&self.command_id, name.as_bytes())
        } else {
            Uuid::now_v7()
        }
    }

    /// A new command caused by a recorded event (a process manager reacting to it): it keeps the
    /// event's correlation id, actor and headers.
    pub fn caused_by(event: &RecordedEvent) -> Self {
        let mut ctx = Self::new();
        if let Some(correlation) = event.metadata.correlation_id {
            ctx.correlation_id = correlation;
        }
        ctx.actor.clone_from(&event.metadata.actor);
        ctx.headers.clone_from(&event.metadata.headers);
        ctx
    }

    /// The next command of the same chain: a new command id (not given: see
    /// [`with_command_id`](Self::with_command_id)), the same correlation id, actor and headers.
    pub fn next_command(&self) -> Self {
        Self {
            command_id: Uuid::now_v7(),
            id_given: false,
            ..self.clone()
        }
    }

    /// Joins an existing correlation chain.
    pub fn with_correlation_id(mut self, correlation_id: Uuid) -> Self {
        self.correlation_id = correlation_id;
        self
    }

    /// Names who acted.
    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Adds a header copied onto every produced event.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// The metadata of the events this command produces.
    pub fn metadata(&self) -> EventMetadata {
        EventMetadata {
            correlation_id: Some(self.correlation_id),
            causation_id: Some(self.command_id),
            actor: self.actor.clone(),
            headers: self.headers.clone(),
        }
    }
}

impl Default for CommandContext {
    fn default() -> Self {
        Self::new()
    }
}
