//! Pointing a transaction at a schema, with checked identifiers.

use sqlx::PgConnection;

use super::error::ProjectionError;

/// Checks that `name` is a plain SQL identifier (letters, digits, `_`; not starting with a
/// digit; at most 63 bytes), so it can be quoted into DDL safely.
pub(crate) fn check_identifier(
    projection: &str,
    what: &str,
    name: &str,
) -> Result<(), ProjectionError> {
    let plain = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if plain {
        return Ok(());
    }
    Err(ProjectionError::misconfigured(
        projection,
        format!(
            "{what} `{name}` must be 1-63 ASCII letters, digits or `_`, not starting with a digit"
        ),
    ))
}

/// Quotes a checked identifier.
pub(crate) fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

/// Sets the transaction's `search_path` to `schema` (then `public`), so the projection's
/// unqualified table names resolve there. Relies on `schema` having passed `check_identifier`.
pub(crate) async fn set_search_path(
    projection: &str,
    tx: &mut PgConnection,
    schema: &str,
) -> Result<(), ProjectionError> {
    sqlx::query("SELECT set_config('search_path', $1, true)")
        .bind(format!("{}, public", quoted(schema)))
        .execute(&mut *tx)
        .await
        .map_err(|e| ProjectionError::database(projection, "set search_path", e))?;
    Ok(())
}
