//! The contract between a domain's event enum and the stores: stable type names, schema versions
//! and JSON payloads. `#[derive(DomainEvent)]` (feature `derive` of the `eventsource` crate)
//! implements it.

/// A domain's events, convertible to and from (type name, schema version, JSON payload).
///
/// The type name is stored and must never change once events of that type exist; it must not
/// be derived from a Rust path that a refactor can rename. The payload is the event's own data:
/// type and version live in their own columns.
pub trait DomainEvent: Sized + Send + Sync + 'static {
    /// Every type name of this enum (for subscriptions that filter by type).
    const EVENT_TYPES: &'static [&'static str];

    /// The stable type name of this event.
    fn event_type(&self) -> &'static str;

    /// The schema version of this event's payload.
    fn schema_version(&self) -> u32;

    /// The payload as JSON.
    fn encode(&self) -> Result<serde_json::Value, EncodeError>;

    /// Rebuilds an event from its stored parts.
    fn decode(
        event_type: &str,
        schema_version: u32,
        payload: &serde_json::Value,
    ) -> Result<Self, DecodeError>;
}

/// An event that could not be turned into a payload the store can keep and read back.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// serde_json could not encode it.
    #[error("event `{event_type}` could not be encoded as JSON: {source}; make its fields serializable (maps need string keys)")]
    Json {
        /// The event's type name.
        event_type: &'static str,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },
    /// It encodes to JSON that does not decode back into the event, so storing it would make
    /// its stream unreadable. Seen with `f64` fields holding NaN or an infinity, which JSON
    /// encodes as `null`.
    #[error("event `{event_type}` encodes to JSON that does not decode back ({source}); nothing was stored. Check for NaN or infinite floats, or serde attributes that write what they cannot read")]
    NotReadBack {
        /// The event's type name.
        event_type: &'static str,
        /// Why the encoded payload does not decode.
        #[source]
        source: DecodeError,
    },
}

/// A stored event that does not decode into the domain's event type.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// No variant has this type name.
    #[error("unknown event type `{event_type}`; add a variant named so (or pinned with #[event(name = \"{event_type}\")]) or filter this type out")]
    UnknownType {
        /// The stored type name.
        event_type: String,
    },
    /// The variant exists but does not read this schema version.
    #[error("event type `{event_type}` has no decoder for schema version {schema_version} (the code reads version {supported}); add an upcaster or a variant for it")]
    UnsupportedVersion {
        /// The stored type name.
        event_type: String,
        /// The stored schema version.
        schema_version: u32,
        /// The version the code reads.
        supported: u32,
    },
    /// The variant's upcaster refused a payload stored under an older schema version.
    #[error("event type `{event_type}`: upcasting a payload of schema version {schema_version} to version {target} failed: {reason}")]
    Upcast {
        /// The stored type name.
        event_type: String,
        /// The stored schema version.
        schema_version: u32,
        /// The version the code reads.
        target: u32,
        /// What the upcaster reported.
        reason: String,
    },
    /// The payload does not match the variant's fields.
    #[error("payload of event type `{event_type}` version {schema_version} does not match its fields: {source}")]
    Payload {
        /// The stored type name.
        event_type: String,
        /// The stored schema version.
        schema_version: u32,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },
}
