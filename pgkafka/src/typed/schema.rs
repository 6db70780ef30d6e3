//! Comparing a [`ReplicatedTable`] type with the live table, before any row arrives: the query
//! ([`check_table`]) apart from the pure comparison of fields with columns ([`problems`]).

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
        source: sqlx::Error,
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
/// Give it what the consumer's database work goes through: a `&PgPool`, a `&mut PgConnection`
/// or a transaction (`&mut *tx`). Decoding does not need this, it reports the same mistakes as a
/// [`DecodeError`](crate::DecodeError) on the first row that shows them; checking at start
/// reports them before any data flows.
///
/// # Errors
/// [`SchemaCheckError::Mismatch`] listing every problem, or [`SchemaCheckError::Database`].
///
/// ```no_run
/// # use pgkafka::ReplicatedTable;
/// # #[derive(ReplicatedTable)] struct Inventory { id: i64 }
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = pgkafka::sqlx::PgPool::connect("postgresql://app@localhost/app").await?;
/// pgkafka::typed::check_table::<Inventory>(&pool).await?;
/// # Ok(()) }
/// ```
pub async fn check_table<'e, T: ReplicatedTable>(executor: impl sqlx::PgExecutor<'e>) -> Result<(), SchemaCheckError> {
    let columns: Vec<(String, bool)> = sqlx::query_as(
        "SELECT a.attname::text, a.attnotnull
           FROM pg_attribute a
           JOIN pg_class c ON c.oid = a.attrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .bind(T::SCHEMA)
    .bind(T::TABLE)
    .fetch_all(executor)
    .await
    .map_err(|source| SchemaCheckError::Database { table: T::TABLE_NAME, source })?;
    let problems = problems::<T>(&columns);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SchemaCheckError::Mismatch { table: T::TABLE_NAME, problems })
    }
}

/// The problems of `T` against a table with these `(column, NOT NULL)` pairs, in field order;
/// none when it fits. No columns at all means the table does not exist.
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

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]

    use pgkafka_common::{Column, DecodeError};

    use super::*;

    /// `sales.items`: a key, a nullable note, and a column added later.
    struct Item;

    impl ReplicatedTable for Item {
        const SCHEMA: &'static str = "sales";
        const TABLE: &'static str = "items";
        const TABLE_NAME: &'static str = "sales.items";
        const TOPIC: &'static str = "items";
        const PARTITION_KEY: &'static [&'static str] = &[];
        const COLUMNS: &'static [Column] = &[
            Column::new("id", "i64"),
            Column::new("note", "Option<String>").nullable(),
            Column::new("tags", "Vec<String>").with_default(),
        ];

        fn decode(_: &[String], _: &[Option<String>]) -> Result<Self, DecodeError> {
            Ok(Item)
        }
    }

    fn columns(spec: &[(&str, bool)]) -> Vec<(String, bool)> {
        spec.iter().map(|&(name, not_null)| (name.to_owned(), not_null)).collect()
    }

    #[test]
    fn a_fitting_table_has_no_problems_whatever_else_it_has() {
        assert!(problems::<Item>(&columns(&[("note", false), ("id", true), ("extra", false)])).is_empty());
        assert!(problems::<Item>(&columns(&[("id", true), ("note", true), ("tags", true)])).is_empty());
    }

    #[test]
    fn each_misfit_is_one_problem_in_field_order() {
        let found = problems::<Item>(&columns(&[("id", false), ("tags", true)]));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("column id may be NULL, but its field of type i64 cannot hold NULL; use Option<i64>"));
        assert!(found[1].starts_with("column note does not exist (read into a field of type Option<String>)"));
    }

    #[test]
    fn a_table_without_columns_does_not_exist() {
        assert_eq!(problems::<Item>(&[]), ["table sales.items does not exist (or has no columns)"]);
    }
}
