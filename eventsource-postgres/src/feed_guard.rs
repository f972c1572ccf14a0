//! Refusing to run the feed on a database whose transaction ids went backwards.

use eventsource_core::StoreError;
use sqlx::{PgConnection, Row};

use crate::error::{backend, corrupt};
use crate::row::transaction_id;
use crate::store::PostgresStore;

const TRANSACTION_IDS: &str = include_str!("sql/transaction_ids.sql");

impl PostgresStore {
    /// Checks, once per store, that no stored event carries a transaction id this cluster has
    /// not assigned yet.
    ///
    /// That happens after a dump is restored into another cluster: its ids start lower, new
    /// events would sort before old ones, and subscribers positioned after the old ones would
    /// never see them. The feed refuses to run instead; the repair is
    /// `SELECT * FROM eventsource.repair_restored_feed()` (docs/administration.md).
    ///
    /// Runs on `conn` when given (a caller's transaction: the query only reads), else on the
    /// pool.
    pub(crate) async fn check_transaction_ids(
        &self,
        conn: Option<&mut PgConnection>,
    ) -> Result<(), StoreError> {
        if self.shared.ids_checked.get().is_some() {
            return Ok(());
        }
        let query = sqlx::query(TRANSACTION_IDS);
        let row = match conn {
            Some(conn) => query.fetch_one(conn).await,
            None => query.fetch_one(&self.pool).await,
        }
        .map_err(|e| backend("compare stored transaction ids with the cluster's", e))?;
        let newest: Option<String> = row
            .try_get("newest_stored")
            .map_err(|e| corrupt(format!("newest stored transaction id: {e}")))?;
        let next: String = row
            .try_get("next_transaction")
            .map_err(|e| corrupt(format!("next transaction id: {e}")))?;
        if let Some(newest) = newest {
            let (newest, next) = (transaction_id(&newest)?, transaction_id(&next)?);
            if newest >= next {
                return Err(StoreError::TransactionIdsWentBackwards {
                    newest_stored: newest,
                    next_transaction: next,
                });
            }
        }
        let _ = self.shared.ids_checked.set(());
        Ok(())
    }
}
