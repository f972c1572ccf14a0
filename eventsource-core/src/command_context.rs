//! The context a command runs in, from which the metadata of its events is derived.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::event::RecordedEvent;
use crate::metadata::EventMetadata;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandContext {
    /// This command's id (UUID v7): the causation id of the events it produces.
    pub command_id: Uuid,
    /// The correlation id carried along the whole chain.
    pub correlation_id: Uuid,
    /// Who acted.
    pub actor: Option<String>,
    /// Free headers copied onto every produced event.
    pub headers: BTreeMap<String, String>,
    /// SHIM (process-managers branch, until idempotent commands land on main): whether
    /// `command_id` was given by the caller, making the command idempotent under it.
    #[doc(hidden)]
    pub idempotent: bool,
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
            idempotent: false,
        }
    }

    /// SHIM until idempotent commands land on main: makes the command idempotent under `id`.
    pub fn with_command_id(mut self, id: Uuid) -> Self {
        self.command_id = id;
        self.idempotent = true;
        self
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

    /// The next command of the same chain: a new command id, the same correlation id, actor
    /// and headers.
    pub fn next_command(&self) -> Self {
        Self {
            command_id: Uuid::now_v7(),
            idempotent: false,
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
