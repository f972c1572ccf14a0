//! Instance state: one row per instance, written in the transaction that moves the manager's
//! checkpoint (or removes the deadline that fired).
//!
//! Why a row and not a stream of its own: the state must move together with the position in
//! the feed (or with the deadline's removal). One transaction does that, with nothing to keep in
//! step: with a state stream, a crash between its append and the checkpoint's move would leave
//! two records to reconcile. The history a stream would give is already in the event log: every
//! command an instance issues produces events that carry its correlation id and the trigger.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::error::ProcessManagerError;
use crate::store::PostgresStore;

const LOAD: &str = include_str!("sql/load_instance.sql");
const SAVE: &str = include_str!("sql/save_instance.sql");
const LIST: &str = include_str!("sql/list_instances.sql");

/// A stored instance of a process manager.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRecord<S> {
    /// The instance's key (from `ProcessManager::instance_of`).
    pub instance: String,
    /// Its state after the last trigger it handled.
    pub state: S,
    /// The correlation id of the event that started it, carried by every command it issues.
    pub correlation_id: Uuid,
    /// Whether it is complete (later events and deadlines are ignored).
    pub completed: bool,
    /// When it was started.
    pub started_at: DateTime<Utc>,
    /// When its state last changed.
    pub updated_at: DateTime<Utc>,
}

/// An instance as the runner loads it before a trigger.
pub(crate) struct Loaded<S> {
    pub state: S,
    pub correlation_id: Uuid,
    pub completed: bool,
}

pub(crate) async fn load<S: DeserializeOwned>(
    conn: &mut PgConnection,
    manager: &str,
    instance: &str,
) -> Result<Option<Loaded<S>>, ProcessManagerError> {
    let db = |e| ProcessManagerError::database(manager, "load an instance", e);
    let Some(row) = sqlx::query(LOAD)
        .bind(manager)
        .bind(instance)
        .fetch_optional(conn)
        .await
        .map_err(db)?
    else {
        return Ok(None);
    };
    let state: serde_json::Value = row.try_get("state").map_err(db)?;
    Ok(Some(Loaded {
        state: decode(manager, instance, state)?,
        correlation_id: row.try_get("correlation_id").map_err(db)?,
        completed: row.try_get("completed").map_err(db)?,
    }))
}

pub(crate) async fn save<S: Serialize>(
    tx: &mut PgConnection,
    manager: &str,
    instance: &str,
    loaded: &Loaded<S>,
) -> Result<(), ProcessManagerError> {
    let state =
        serde_json::to_value(&loaded.state).map_err(|source| ProcessManagerError::State {
            manager: manager.to_owned(),
            instance: instance.to_owned(),
            source,
        })?;
    sqlx::query(SAVE)
        .bind(manager)
        .bind(instance)
        .bind(state)
        .bind(loaded.correlation_id)
        .bind(loaded.completed)
        .execute(tx)
        .await
        .map_err(|e| ProcessManagerError::database(manager, "save an instance", e))?;
    Ok(())
}

fn decode<S: DeserializeOwned>(
    manager: &str,
    instance: &str,
    state: serde_json::Value,
) -> Result<S, ProcessManagerError> {
    serde_json::from_value(state).map_err(|source| ProcessManagerError::State {
        manager: manager.to_owned(),
        instance: instance.to_owned(),
        source,
    })
}

/// Every instance of the process manager `manager`, oldest first, with its state decoded into
/// `S` (the manager's `State`).
pub async fn instances<S: DeserializeOwned>(
    store: &PostgresStore,
    manager: &str,
) -> Result<Vec<InstanceRecord<S>>, ProcessManagerError> {
    let db = |e| ProcessManagerError::database(manager, "list instances", e);
    let rows = sqlx::query(LIST)
        .bind(manager)
        .fetch_all(store.pool())
        .await
        .map_err(db)?;
    rows.iter()
        .map(|row| {
            let instance: String = row.try_get("instance").map_err(db)?;
            let state = decode(manager, &instance, row.try_get("state").map_err(db)?)?;
            Ok(InstanceRecord {
                instance,
                state,
                correlation_id: row.try_get("correlation_id").map_err(db)?,
                completed: row.try_get("completed").map_err(db)?,
                started_at: row.try_get("started_at").map_err(db)?,
                updated_at: row.try_get("updated_at").map_err(db)?,
            })
        })
        .collect()
}

/// One instance of the process manager `manager`, if it exists.
pub async fn instance<S: DeserializeOwned>(
    store: &PostgresStore,
    manager: &str,
    instance: &str,
) -> Result<Option<InstanceRecord<S>>, ProcessManagerError> {
    Ok(instances(store, manager)
        .await?
        .into_iter()
        .find(|i| i.instance == instance))
}
