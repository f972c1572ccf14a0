//! Turning sqlx errors into the store's typed errors, by SQLSTATE and constraint name.

use eventsource_core::StoreError;

/// SQLSTATE of a unique violation.
const UNIQUE_VIOLATION: &str = "23505";
/// SQLSTATE of a serialization failure: under `serializable` isolation, how a writer that
/// lost the race for a stream's versions may fail instead of with a unique violation.
pub(crate) const SERIALIZATION_FAILURE: &str = "40001";
/// SQLSTATE of a numeric value out of range (a version past `bigint`).
pub(crate) const NUMERIC_OUT_OF_RANGE: &str = "22003";

/// The unique constraint that makes two writers of one version collide.
pub(crate) const STREAM_VERSION_KEY: &str = "events_stream_version_key";
/// The unique constraint on event ids (idempotent appends).
pub(crate) const EVENT_ID_KEY: &str = "events_event_id_key";

/// The SQLSTATE of a database error, if `error` is one.
pub(crate) fn sqlstate(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}

/// The constraint a unique violation hit, if `error` is one.
pub(crate) fn unique_violation(error: &sqlx::Error) -> Option<&str> {
    let db = error.as_database_error()?;
    if db.code().as_deref() != Some(UNIQUE_VIOLATION) {
        return None;
    }
    db.constraint()
}

/// Wraps a driver error with what the store was doing: [`StoreError::Unavailable`] when it may
/// clear by itself (see [`is_transient`]), else [`StoreError::Backend`].
pub(crate) fn backend(operation: impl Into<String>, error: sqlx::Error) -> StoreError {
    if is_transient(&error) {
        StoreError::unavailable(operation, error)
    } else {
        StoreError::backend(operation, error)
    }
}

/// Whether a driver error may clear by itself, so that the same call can be tried again:
/// - the connection failed or was lost (I/O, TLS, a pool that found no connection in time);
/// - SQLSTATE class 08 (connection exception);
/// - 57P01/57P02/57P03: the server is shutting down, crashed, or is still starting;
/// - 53300: too many connections;
/// - 40001/40P01: a serialization failure or a deadlock (the transaction was rolled back).
///
/// A closed pool is not transient: the store was closed on purpose.
pub(crate) fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || matches!(
                    code.as_ref(),
                    "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01"
                )
        }),
        _ => false,
    }
}

/// Reports stored data that cannot be what the schema promises.
pub(crate) fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt { what: what.into() }
}
