//! Snapshots in PostgreSQL: one row per stream in `eventsource.snapshots`, the latest kept.

use async_trait::async_trait;
use eventsource_core::{Snapshot, SnapshotStore, StoreError, StreamId};

use crate::error::{backend, corrupt};
use crate::row::{column, stream_version};
use crate::store::PostgresStore;

const LOAD_SNAPSHOT: &str = include_str!("sql/load_snapshot.sql");
const SAVE_SNAPSHOT: &str = include_str!("sql/save_snapshot.sql");

#[async_trait]
impl SnapshotStore for PostgresStore {
    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        let row = sqlx::query(LOAD_SNAPSHOT)
            .bind(stream.category().as_str())
            .bind(stream.id())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| backend(format!("load the snapshot of {stream}"), e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let state_version: i64 = column(&row, "state_version")?;
        Ok(Some(Snapshot {
            stream_id: stream.clone(),
            version: stream_version(column(&row, "version")?)?,
            state_version: u32::try_from(state_version).map_err(|_| {
                corrupt(format!(
                    "the snapshot of {stream} has state version {state_version}"
                ))
            })?,
            state: column(&row, "state")?,
        }))
    }

    /// Saves in one statement; of two writers racing, the later version wins.
    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let stream = &snapshot.stream_id;
        sqlx::query(SAVE_SNAPSHOT)
            .bind(stream.category().as_str())
            .bind(stream.id())
            .bind(i64::from(snapshot.version))
            .bind(i64::from(snapshot.state_version))
            .bind(&snapshot.state)
            .execute(&self.pool)
            .await
            .map_err(|e| backend(format!("save the snapshot of {stream}"), e))?;
        Ok(())
    }
}
