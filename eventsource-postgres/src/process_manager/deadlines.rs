//! Deadlines: rows set and cancelled in the instance's transaction, fired by the active runner,
//! each in a transaction that removes its row, so that one survives restarts and failover and
//! fires once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::error::ProcessManagerError;
use crate::store::PostgresStore;

const SET: &str = include_str!("sql/set_deadline.sql");
const CANCEL: &str = include_str!("sql/cancel_deadline.sql");
const CANCEL_ALL: &str = include_str!("sql/cancel_all_deadlines.sql");
const DUE: &str = include_str!("sql/due_deadlines.sql");
const NEXT: &str = include_str!("sql/next_deadline.sql");
const TAKE: &str = include_str!("sql/take_deadline.sql");
const PARK: &str = include_str!("sql/park_deadline.sql");
const LIST: &str = include_str!("sql/list_deadlines.sql");

/// A deadline of a process manager instance, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadline {
    /// The instance.
    pub instance: String,
    /// The deadline's name.
    pub name: String,
    /// Its id: the trigger id of its firing (its commands' ids derive from it).
    pub id: Uuid,
    /// When it is due (database time).
    pub due_at: DateTime<Utc>,
    /// Set when it was parked: its commands kept failing.
    pub error: Option<String>,
    /// When it was parked.
    pub parked_at: Option<DateTime<Utc>>,
}

/// A deadline that is due, as the runner fires it.
pub(crate) struct Due {
    pub instance: String,
    pub name: String,
    pub id: Uuid,
}

fn db<'a>(
    manager: &'a str,
    operation: &'static str,
) -> impl Fn(sqlx::Error) -> ProcessManagerError + 'a {
    move |e| ProcessManagerError::database(manager, operation, e)
}

pub(crate) async fn set(
    tx: &mut PgConnection,
    manager: &str,
    instance: &str,
    name: &str,
    id: Uuid,
    after: Duration,
) -> Result<(), ProcessManagerError> {
    sqlx::query(SET)
        .bind(manager)
        .bind(instance)
        .bind(name)
        .bind(id)
        .bind(after.as_secs_f64())
        .execute(tx)
        .await
        .map_err(db(manager, "set a deadline"))?;
    Ok(())
}

pub(crate) async fn cancel(
    tx: &mut PgConnection,
    manager: &str,
    instance: &str,
    name: &str,
) -> Result<(), ProcessManagerError> {
    sqlx::query(CANCEL)
        .bind(manager)
        .bind(instance)
        .bind(name)
        .execute(tx)
        .await
        .map_err(db(manager, "cancel a deadline"))?;
    Ok(())
}

pub(crate) async fn cancel_all(
    tx: &mut PgConnection,
    manager: &str,
    instance: &str,
) -> Result<(), ProcessManagerError> {
    sqlx::query(CANCEL_ALL)
        .bind(manager)
        .bind(instance)
        .execute(tx)
        .await
        .map_err(db(manager, "cancel an instance's deadlines"))?;
    Ok(())
}

/// Up to `limit` due deadlines, earliest first.
pub(crate) async fn due(
    conn: &mut PgConnection,
    manager: &str,
    limit: i64,
) -> Result<Vec<Due>, ProcessManagerError> {
    let failed = db(manager, "read due deadlines");
    let rows = sqlx::query(DUE)
        .bind(manager)
        .bind(limit)
        .fetch_all(conn)
        .await
        .map_err(&failed)?;
    rows.iter()
        .map(|row| {
            Ok(Due {
                instance: row.try_get("instance").map_err(&failed)?,
                name: row.try_get("name").map_err(&failed)?,
                id: row.try_get("id").map_err(&failed)?,
            })
        })
        .collect()
}

/// How long until the next pending deadline is due (zero if one is overdue), `None` if none is
/// pending.
pub(crate) async fn next_due_in(
    conn: &mut PgConnection,
    manager: &str,
) -> Result<Option<Duration>, ProcessManagerError> {
    let due_in: Option<f64> = sqlx::query_scalar(NEXT)
        .bind(manager)
        .fetch_one(conn)
        .await
        .map_err(db(manager, "read the next deadline"))?;
    Ok(due_in.map(|secs| Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX)))
}

/// Removes a deadline that fires; `false` if it was moved or cancelled meanwhile.
pub(crate) async fn take(
    tx: &mut PgConnection,
    manager: &str,
    due: &Due,
) -> Result<bool, ProcessManagerError> {
    let done = sqlx::query(TAKE)
        .bind(manager)
        .bind(&due.instance)
        .bind(&due.name)
        .bind(due.id)
        .execute(tx)
        .await
        .map_err(db(manager, "remove a fired deadline"))?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn park(
    conn: &mut PgConnection,
    manager: &str,
    due: &Due,
    error: &str,
) -> Result<(), ProcessManagerError> {
    sqlx::query(PARK)
        .bind(manager)
        .bind(&due.instance)
        .bind(&due.name)
        .bind(due.id)
        .bind(error)
        .execute(conn)
        .await
        .map_err(db(manager, "park a deadline"))?;
    Ok(())
}

/// The deadlines of the process manager `manager`, pending and parked, earliest first.
pub async fn deadlines(
    store: &PostgresStore,
    manager: &str,
) -> Result<Vec<Deadline>, ProcessManagerError> {
    let failed = db(manager, "list deadlines");
    let rows = sqlx::query(LIST)
        .bind(manager)
        .fetch_all(store.pool())
        .await
        .map_err(&failed)?;
    rows.iter()
        .map(|row| {
            Ok(Deadline {
                instance: row.try_get("instance").map_err(&failed)?,
                name: row.try_get("name").map_err(&failed)?,
                id: row.try_get("id").map_err(&failed)?,
                due_at: row.try_get("due_at").map_err(&failed)?,
                error: row.try_get("error").map_err(&failed)?,
                parked_at: row.try_get("parked_at").map_err(&failed)?,
            })
        })
        .collect()
}
