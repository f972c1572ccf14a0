//! Who runs a projection: the active runner registers itself, with the projection's filter,
//! when it takes the projection's lock, so other processes can see who holds it, since when,
//! and how far behind it is without the projection's code.

use chrono::{DateTime, Utc};
use eventsource_core::{Category, FeedFilter};
use sqlx::{PgConnection, Row};

use super::error::ProjectionError;
use super::runner::RUNNER;
use crate::active_instance::ActiveInstance;
use crate::store::PostgresStore;

const REGISTER: &str = include_str!("sql/register_runner.sql");
const REGISTERED: &str = include_str!("sql/registered_runner.sql");

/// The runner that holds a projection's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveRunner {
    /// The runner's instance name ([`ProjectionRunner::instance`](super::ProjectionRunner::instance)):
    /// host, process id and a random suffix unless set.
    pub instance: String,
    /// The server process of its lock connection (for `pg_stat_activity`).
    pub backend_pid: i32,
    /// When it became the active runner.
    pub since: DateTime<Utc>,
}

/// A projection as its last active runner registered it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Registration {
    pub(crate) filter: FeedFilter,
    /// `Some` while the registered runner still holds the projection's lock.
    pub(crate) active: Option<ActiveRunner>,
}

/// Records, on the connection that holds the projection's lock, that `instance` is now its
/// active runner, with the projection's filter.
pub(crate) async fn register(
    conn: &mut PgConnection,
    projection: &str,
    filter: &FeedFilter,
    instance: &str,
) -> Result<(), ProjectionError> {
    sqlx::query(REGISTER)
        .bind(projection)
        .bind(filter.category_names())
        .bind(filter.event_types.as_deref())
        .bind(instance)
        .execute(&mut *conn)
        .await
        .map_err(|e| ProjectionError::database(projection, "register the active runner", e))?;
    Ok(())
}

/// The registration of `projection`, `None` when no runner of it was ever active.
pub(crate) async fn registration(
    store: &PostgresStore,
    projection: &str,
) -> Result<Option<Registration>, ProjectionError> {
    let db = |e| ProjectionError::database(projection, "read the active runner", e);
    let row = sqlx::query(REGISTERED)
        .bind(projection)
        .bind(ActiveInstance::key(RUNNER, projection))
        .fetch_optional(store.pool())
        .await
        .map_err(db)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let categories: Option<Vec<String>> = row.try_get("categories").map_err(db)?;
    let event_types: Option<Vec<String>> = row.try_get("event_types").map_err(db)?;
    let mut filter = FeedFilter::all();
    if let Some(categories) = categories {
        let categories = categories
            .into_iter()
            .map(Category::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(eventsource_core::StoreError::from)?;
        filter = filter.with_categories(categories);
    }
    if let Some(event_types) = event_types {
        filter = filter.with_event_types(event_types);
    }
    let holding: bool = row.try_get("holding").map_err(db)?;
    let active = if holding {
        Some(ActiveRunner {
            instance: row.try_get("instance").map_err(db)?,
            backend_pid: row.try_get("backend_pid").map_err(db)?,
            since: row.try_get("active_since").map_err(db)?,
        })
    } else {
        None
    };
    Ok(Some(Registration { filter, active }))
}

/// The runner of `projection` active right now, in any process, if there is one.
pub async fn active_runner(
    store: &PostgresStore,
    projection: &str,
) -> Result<Option<ActiveRunner>, ProjectionError> {
    Ok(registration(store, projection)
        .await?
        .and_then(|registration| registration.active))
}

/// A name for a runner instance: host, process id and a random suffix.
pub(crate) fn default_instance() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned());
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    format!(
        "{host}:{}:{}",
        std::process::id(),
        &suffix[suffix.len() - 6..]
    )
}
