//! Event metadata: where an event came from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Stored beside every event: the correlation and causation chain, the acting user and free
/// headers. Stored as JSON, so fields can be added without migrating old events.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EventMetadata {
    /// The id shared by everything one request set off (the first command's id by default).
    pub correlation_id: Option<Uuid>,
    /// The id of the command (or event) that directly caused this event.
    pub causation_id: Option<Uuid>,
    /// Who acted, if known (a user id, a service name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Free key/value headers (tenant, trace ids, client version...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}
