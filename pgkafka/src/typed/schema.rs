//! Comparing a [`ReplicatedTable`] type with the live table, before any row arrives.

use pgkafka_common::ReplicatedTable;

/// Why a type does not fit its table, see [`check_table`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaCheckError {
    /// The catalog could not be read.
    #[error("cannot read the columns of table {table}: {source}")]
    Database {
        /// The table, as in [`ReplicatedTable::TABLE_NAME`].
        table: &'static str,
        /// The database error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The table and the type disagree; each problem says what to change.
    #[error("table {table} does not match its Rust type ({} problem(s)):\n  - {}", problems.len(), problems.join("\n  - "))]
    Mismatch {
        /// The table, as in [`ReplicatedTable::TABLE_NAME`].
        table: &'static str,
        /// One line per problem.
        problems: Vec<String>,
    },
}

/// Checks that `T`'s table exists, that every column a field reads exists (fields with
/// `#[replicated(default)]` may read columns yet to be added), and that no column that may be
/// `NULL` feeds a field that cannot hold it.
///
/// Decoding does not need this, it reports the same mistakes as a [`DecodeError`](crate::DecodeError)
/// on the first row that shows them; checking at start reports them before any data flows.
///
/// # Errors
/// [`SchemaCheckError::Mismatch`] listing every problem, or [`SchemaCheckError::Database`].
///
/// ```no_run
/// # use pgkafka::ReplicatedTable;
/// # #[derive(ReplicatedTable)] struct Inventory { id: i64 }
/// # async fn run(client: &tokio_postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
/// pgkafka::typed::check_table::<Inventory>(client).await?;
/// # Ok(()) }
/// ```
pub async fn check_table<T: ReplicatedTable>(client: &tokio_postgres::Client) -> Result<(), SchemaCheckError> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.attnotnull
               FROM pg_attribute a
               JOIN pg_class c ON c.oid = a.attrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&T::SCHEMA, &T::TABLE],
        )
        .await
        .map_err(|source| SchemaCheckError::Database { table: T::TABLE_NAME, source })?;
    let mut columns = Vec::with_capacity(rows.len());
    for row in &rows {
        let name: String = row.try_get(0).map_err(|source| SchemaCheckError::Database { table: T::TABLE_NAME, source })?;
        let not_null: bool = row.try_get(1).map_err(|source| SchemaCheckError::Database { table: T::TABLE_NAME, source })?;
        columns.push((name, not_null));
    }
    let problems = problems::<T>(&columns);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SchemaCheckError::Mismatch { table: T::TABLE_NAME, problems })
    }
}

/// The problems of `T` against a table with these `(column, NOT NULL)` pairs; none when it fits.
fn problems<T: ReplicatedTable>(columns: &[(String, bool)]) -> Vec<String> {
    if columns.is_empty() {
        return vec![format!("table {}.{} does not exist (or has no columns)", T::SCHEMA, T::TABLE)];
    }
    let mut problems = Vec::new();
    for field in T::COLUMNS {
        match columns.iter().find(|(name, _)| name == field.name) {
            None if field.has_default => {}
            None => problems.push(format!(
                "column {} does not exist (read into a field of type {}); fix the name with #[replicated(column = \"...\")], or add #[replicated(default)] if the column is added later",
                field.name, field.rust_type
            )),
            Some((_, false)) if !field.nullable => problems.push(format!(
                "column {} may be NULL, but its field of type {} cannot hold NULL; use Option<{}> or make the column NOT NULL",
                field.name, field.rust_type, field.rust_type
            )),
            Some(_) => {}
        }
    }
    problems
}
