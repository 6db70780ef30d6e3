//! Reads one table in primary-key order, chunk by chunk (keyset pagination): the pure SQL
//! ([`TableQuery`]) and the I/O [`ChunkReader`] that runs it on a client whose transaction the
//! caller opened (for a snapshot: `REPEATABLE READ` with an imported snapshot).
//!
//! Values come back in the text form pgoutput sends (each type's output function, through
//! `format('%s', ..)`; a plain `::text` cast differs for some types, e.g. `boolean`), NULL as
//! `None`. The last key is bound as text parameters and cast to the key columns' types, never
//! spliced into the SQL.

use pgkafka_common::ident::{qualified, quote_ident, table_name};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use crate::producer::encode::ColumnType;

/// A primary-key column: its name and its SQL type as `format_type` writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyColumn {
    pub(crate) name: String,
    pub(crate) sql_type: String,
}

/// The keyset-pagination queries of one table. Pure: builds SQL text only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableQuery {
    schema: String,
    table: String,
    columns: Vec<String>,
    key: Vec<KeyColumn>,
}

impl TableQuery {
    /// The queries for `schema.table`, selecting `columns` (in the order records list them) and
    /// paging by `key` (the primary key, in key order).
    ///
    /// # Errors
    /// A message naming the table when it has no primary key or no columns.
    pub(crate) fn new(schema: &str, table: &str, columns: Vec<String>, key: Vec<KeyColumn>) -> Result<Self, String> {
        if key.is_empty() {
            return Err(format!(
                "table {} has no primary key; snapshots read tables in primary-key order, so it cannot be snapshotted. \
                 Add a primary key (ALTER TABLE {} ADD PRIMARY KEY (...)) or take it out of the publication",
                table_name(schema, table),
                qualified(schema, table)
            ));
        }
        if columns.is_empty() {
            return Err(format!("table {} has no columns to snapshot", table_name(schema, table)));
        }
        Ok(Self { schema: schema.to_owned(), table: table.to_owned(), columns, key })
    }

    /// The records' `table_name` of the table.
    pub(crate) fn table_name(&self) -> String {
        table_name(&self.schema, &self.table)
    }

    /// The selected columns, in record order.
    pub(crate) fn columns(&self) -> &[String] {
        &self.columns
    }

    /// How many key columns page the table.
    pub(crate) fn key_len(&self) -> usize {
        self.key.len()
    }

    /// One value in the type's output form, NULL kept NULL.
    fn as_text(column: &str) -> String {
        let column = quote_ident(column);
        format!("CASE WHEN {column} IS NULL THEN NULL ELSE format('%s', {column}) END")
    }

    fn select_list(&self) -> String {
        self.columns
            .iter()
            .chain(self.key.iter().map(|k| &k.name))
            .map(|c| Self::as_text(c))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn order_by(&self) -> String {
        self.key.iter().map(|k| quote_ident(&k.name)).collect::<Vec<_>>().join(", ")
    }

    /// The first chunk: `$1` is the row limit.
    pub(crate) fn first_sql(&self) -> String {
        format!(
            "SELECT {} FROM {} ORDER BY {} LIMIT $1",
            self.select_list(),
            qualified(&self.schema, &self.table),
            self.order_by()
        )
    }

    /// The chunk after a key: `$1..$n` are the last key's values as text, `$n+1` the row limit.
    pub(crate) fn next_sql(&self) -> String {
        let params = self
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("CAST(${}::text AS {})", i + 1, k.sql_type))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "SELECT {} FROM {} WHERE ({}) > ({params}) ORDER BY {} LIMIT ${}",
            self.select_list(),
            qualified(&self.schema, &self.table),
            self.order_by(),
            self.order_by(),
            self.key.len() + 1
        )
    }
}

/// A column pgoutput sends of a table: its name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublishedColumn {
    pub(crate) name: String,
    pub(crate) type_oid: u32,
    pub(crate) type_modifier: i32,
}

impl PublishedColumn {
    /// The column as the record writer takes it.
    pub(crate) fn as_type(&self) -> ColumnType<'_> {
        ColumnType::new(&self.name, self.type_oid, self.type_modifier)
    }
}

/// The columns pgoutput sends of `schema.table`, with their types: every live column but
/// generated ones, in table order.
///
/// # Errors
/// A message naming the table, on a database error.
pub(crate) async fn published_columns(client: &Client, schema: &str, table: &str) -> Result<Vec<PublishedColumn>, String> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid, a.atttypmod FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = CAST($1::text AS regclass) AND a.attnum > 0 AND NOT a.attisdropped \
             AND a.attgenerated = '' ORDER BY a.attnum",
            &[&qualified(schema, table)],
        )
        .await
        .map_err(|e| format!("reading the columns of table {}: {e}", table_name(schema, table)))?;
    Ok(rows
        .iter()
        .map(|row| PublishedColumn { name: row.get(0), type_oid: row.get(1), type_modifier: row.get(2) })
        .collect())
}

/// One chunk of rows, in key order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Chunk {
    /// The rows' values, in [`TableQuery::columns`] order.
    pub(crate) rows: Vec<Vec<Option<String>>>,
    /// The last row's key (key order, as text), or `None` when the chunk is empty.
    pub(crate) last_key: Option<Vec<String>>,
}

impl Chunk {
    /// Whether this was the table's last chunk (it held fewer rows than asked for).
    pub(crate) fn is_last(&self, limit: usize) -> bool {
        self.rows.len() < limit
    }
}

/// Runs a [`TableQuery`] chunk by chunk on one client (inside the caller's transaction).
#[derive(Debug)]
pub(crate) struct ChunkReader {
    query: TableQuery,
    first: Statement,
    next: Statement,
    limit: usize,
}

impl ChunkReader {
    /// Reads the columns and key types of `schema.table` and prepares its queries. `columns`
    /// are the record's columns (the publication's column list, or every column).
    ///
    /// # Errors
    /// A message naming the table: no primary key, or a database error.
    pub(crate) async fn prepare(
        client: &Client,
        schema: &str,
        table: &str,
        columns: Vec<String>,
        limit: usize,
    ) -> Result<Self, String> {
        let name = table_name(schema, table);
        let rows = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
                 FROM pg_catalog.pg_index i \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = CAST($1::text AS regclass) AND i.indisprimary \
                 ORDER BY array_position(i.indkey::int2[], a.attnum)",
                &[&qualified(schema, table)],
            )
            .await
            .map_err(|e| format!("reading the primary key of table {name}: {e}"))?;
        let key = rows.iter().map(|row| KeyColumn { name: row.get(0), sql_type: row.get(1) }).collect();
        let query = TableQuery::new(schema, table, columns, key)?;
        let failed = |e: tokio_postgres::Error| format!("preparing the snapshot query of table {name}: {e}");
        let first = client.prepare(&query.first_sql()).await.map_err(failed)?;
        let next = client.prepare(&query.next_sql()).await.map_err(failed)?;
        Ok(Self { query, first, next, limit: limit.max(1) })
    }

    /// The table's queries.
    pub(crate) fn query(&self) -> &TableQuery {
        &self.query
    }

    /// The most rows a chunk holds.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// The chunk after `after` (the last key read), or the first chunk for `None`.
    ///
    /// # Errors
    /// A message naming the table and the key, on a database error.
    pub(crate) async fn read(&self, client: &Client, after: Option<&[String]>) -> Result<Chunk, String> {
        let limit = i64::try_from(self.limit).unwrap_or(i64::MAX);
        let rows = match after {
            None => client.query(&self.first, &[&limit]).await,
            Some(key) => {
                if key.len() != self.query.key_len() {
                    return Err(format!(
                        "table {}: a resume key has {} values but the primary key has {} columns",
                        self.query.table_name(),
                        key.len(),
                        self.query.key_len()
                    ));
                }
                let mut params: Vec<&(dyn ToSql + Sync)> = key.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                params.push(&limit);
                client.query(&self.next, &params).await
            }
        }
        .map_err(|e| format!("reading table {} after key {after:?}: {e}", self.query.table_name()))?;
        let width = self.query.columns.len();
        let mut chunk = Chunk { rows: Vec::with_capacity(rows.len()), last_key: None };
        for row in &rows {
            let mut values: Vec<Option<String>> = (0..row.len()).map(|i| row.get(i)).collect();
            let key = values.split_off(width.min(values.len()));
            chunk.last_key = Some(key.into_iter().map(Option::unwrap_or_default).collect());
            chunk.rows.push(values);
        }
        Ok(chunk)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(name: &str, sql_type: &str) -> KeyColumn {
        KeyColumn { name: name.into(), sql_type: sql_type.into() }
    }

    #[test]
    fn a_composite_key_pages_by_row_comparison_with_bound_casts() {
        let query = TableQuery::new(
            "public",
            "orders",
            vec!["org".into(), "id".into(), "note".into()],
            vec![key("org", "integer"), key("id", "bigint")],
        )
        .unwrap();
        assert_eq!(
            query.next_sql(),
            "SELECT CASE WHEN \"org\" IS NULL THEN NULL ELSE format('%s', \"org\") END, \
             CASE WHEN \"id\" IS NULL THEN NULL ELSE format('%s', \"id\") END, \
             CASE WHEN \"note\" IS NULL THEN NULL ELSE format('%s', \"note\") END, \
             CASE WHEN \"org\" IS NULL THEN NULL ELSE format('%s', \"org\") END, \
             CASE WHEN \"id\" IS NULL THEN NULL ELSE format('%s', \"id\") END \
             FROM \"public\".\"orders\" WHERE (\"org\", \"id\") > (CAST($1::text AS integer), CAST($2::text AS bigint)) \
             ORDER BY \"org\", \"id\" LIMIT $3"
        );
        assert!(query.first_sql().ends_with("FROM \"public\".\"orders\" ORDER BY \"org\", \"id\" LIMIT $1"));
        assert_eq!(query.table_name(), "orders");
    }

    #[test]
    fn identifiers_are_quoted_and_schemas_qualified() {
        let query = TableQuery::new("Sales", "odd\"name", vec!["select".into()], vec![key("select", "text")]).unwrap();
        assert_eq!(query.table_name(), "Sales.odd\"name");
        let sql = query.next_sql();
        assert!(sql.contains("FROM \"Sales\".\"odd\"\"name\" WHERE (\"select\") > (CAST($1::text AS text))"), "{sql}");
        assert!(sql.ends_with("ORDER BY \"select\" LIMIT $2"), "{sql}");
    }

    #[test]
    fn a_table_without_primary_key_is_refused_by_name() {
        let error = TableQuery::new("audit", "events", vec!["id".into()], vec![]).unwrap_err();
        assert!(error.contains("table audit.events has no primary key"), "{error}");
        assert!(error.contains("\"audit\".\"events\""), "{error}");
    }

    #[test]
    fn a_short_chunk_is_the_last() {
        let chunk = Chunk { rows: vec![vec![None]], last_key: Some(vec!["1".into()]) };
        assert!(chunk.is_last(2));
        assert!(!chunk.is_last(1));
        assert!(Chunk::default().is_last(1));
    }
}
