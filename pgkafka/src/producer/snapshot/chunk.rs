//! Reads one table in primary-key order, chunk by chunk (keyset pagination): the pure SQL
//! ([`TableQuery`]) and the I/O [`ChunkReader`] that runs it on a client whose transaction the
//! caller opened (for a snapshot: `REPEATABLE READ` with an imported snapshot).
//!
//! A chunk is read as `COPY (SELECT ..) TO STDOUT` in the text format: the server writes each
//! value with its type's output function, the text form pgoutput sends, and does no more work
//! per value than that (a `SELECT` returning the same text costs it a cast or `format()` per
//! value, and the client a second decoding). COPY takes no parameters, so the last key is bound
//! to session settings first (`set_config($1, $2, false)`, parameterised) and the COPY reads them
//! back with `current_setting`, cast to the key columns' types: no value is spliced into SQL.

use futures::StreamExt as _;
use pgkafka_common::ident::{qualified, quote_ident, table_name};
use tokio_postgres::Client;

use super::copy_text::{CopyTextRows, TextRow};
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
    /// Where each key column is in a selected row: among `columns`, or selected after them.
    key_positions: Vec<usize>,
}

/// The session setting that holds the value of key column `index` of the last key read: a
/// placeholder setting under the `pgkafka` prefix, private to the reading connection.
fn after_setting(index: usize) -> String {
    format!("pgkafka.snapshot_after_{index}")
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
        let mut extra = 0;
        let key_positions = key
            .iter()
            .map(|k| {
                columns.iter().position(|c| *c == k.name).unwrap_or_else(|| {
                    extra += 1;
                    columns.len() + extra - 1
                })
            })
            .collect();
        Ok(Self { schema: schema.to_owned(), table: table.to_owned(), columns, key, key_positions })
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

    /// The key columns that are not among the record's columns, selected after them.
    fn extra_key_columns(&self) -> impl Iterator<Item = &KeyColumn> {
        self.key.iter().filter(|k| !self.columns.contains(&k.name))
    }

    /// How many values a selected row has.
    fn width(&self) -> usize {
        self.columns.len() + self.extra_key_columns().count()
    }

    fn select_list(&self) -> String {
        self.columns
            .iter()
            .chain(self.extra_key_columns().map(|k| &k.name))
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn order_by(&self) -> String {
        self.key.iter().map(|k| quote_ident(&k.name)).collect::<Vec<_>>().join(", ")
    }

    /// The `COPY` of the (at most `limit`) rows after the key `after` (key order, as text; the
    /// first rows for `None`). `after` has one value per key column (the caller checks).
    pub(crate) fn copy_sql(&self, after: Option<&[String]>, limit: usize) -> String {
        let table = qualified(&self.schema, &self.table);
        let order_by = self.order_by();
        let filter = match after {
            None => String::new(),
            Some(after) => {
                let bounds = self
                    .key
                    .iter()
                    .zip(after)
                    .enumerate()
                    .map(|(i, (k, _))| format!("CAST(current_setting('{}') AS {})", after_setting(i), k.sql_type))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(" WHERE ({order_by}) > ({bounds})")
            }
        };
        format!("COPY (SELECT {} FROM {table}{filter} ORDER BY {order_by} LIMIT {limit}) TO STDOUT", self.select_list())
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
    limit: usize,
}

impl ChunkReader {
    /// Reads the key columns and their types of `schema.table`. `columns` are the record's
    /// columns (the publication's column list, or every column).
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
        Ok(Self { query, limit: limit.max(1) })
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
    /// A message naming the table and the key, on a database error or a row that cannot be read.
    pub(crate) async fn read(&self, client: &Client, after: Option<&[String]>) -> Result<Chunk, String> {
        self.read_reusing(client, after, Vec::new()).await
    }

    /// Like [`read`](Self::read), writing the rows over `spare` (the rows of a chunk already
    /// sent) so that a steady snapshot allocates no strings per value.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub(crate) async fn read_reusing(
        &self,
        client: &Client,
        after: Option<&[String]>,
        spare: Vec<TextRow>,
    ) -> Result<Chunk, String> {
        if let Some(key) = after {
            if key.len() != self.query.key_len() {
                return Err(format!(
                    "table {}: a resume key has {} values but the primary key has {} columns",
                    self.query.table_name(),
                    key.len(),
                    self.query.key_len()
                ));
            }
        }
        let failed = |e: String| format!("reading table {} after key {after:?}: {e}", self.query.table_name());
        if let Some(key) = after {
            // Session settings, not transaction-local ones: they hold whether or not the caller
            // opened a transaction, and every read sets them again before its COPY.
            let calls: Vec<String> =
                (0..key.len()).map(|i| format!("set_config(${}, ${}, false)", 2 * i + 1, 2 * i + 2)).collect();
            let names: Vec<String> = (0..key.len()).map(after_setting).collect();
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = names
                .iter()
                .zip(key)
                .flat_map(|(name, value)| [name as &(dyn tokio_postgres::types::ToSql + Sync), value as _])
                .collect();
            client.execute(&format!("SELECT {}", calls.join(", ")), &params).await.map_err(|e| failed(e.to_string()))?;
        }
        let sql = self.query.copy_sql(after, self.limit);
        let stream = client.copy_out(sql.as_str()).await.map_err(|e| failed(e.to_string()))?;
        let mut stream = std::pin::pin!(stream);
        let mut parser = CopyTextRows::reusing(self.query.width(), spare);
        let mut rows = Vec::with_capacity(self.limit.min(16_384));
        while let Some(data) = stream.next().await {
            let data = data.map_err(|e| failed(e.to_string()))?;
            parser.push(&data, &mut rows).map_err(failed)?;
        }
        parser.finish().map_err(failed)?;
        let last_key = rows.last().map(|row| {
            self.query
                .key_positions
                .iter()
                .map(|&i| row.get(i).cloned().flatten().unwrap_or_default())
                .collect()
        });
        let width = self.query.columns.len();
        if self.query.width() > width {
            for row in &mut rows {
                row.truncate(width);
            }
        }
        Ok(Chunk { rows, last_key })
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
    fn a_composite_key_pages_by_row_comparison_with_the_last_key_from_session_settings() {
        let query = TableQuery::new(
            "public",
            "orders",
            vec!["org".into(), "id".into(), "note".into()],
            vec![key("org", "integer"), key("id", "bigint")],
        )
        .unwrap();
        assert_eq!(
            query.copy_sql(Some(&["7".into(), "12".into()]), 500),
            "COPY (SELECT \"org\", \"id\", \"note\" FROM \"public\".\"orders\" \
             WHERE (\"org\", \"id\") > (CAST(current_setting('pgkafka.snapshot_after_0') AS integer), \
             CAST(current_setting('pgkafka.snapshot_after_1') AS bigint)) \
             ORDER BY \"org\", \"id\" LIMIT 500) TO STDOUT"
        );
        assert_eq!(
            query.copy_sql(None, 10),
            "COPY (SELECT \"org\", \"id\", \"note\" FROM \"public\".\"orders\" ORDER BY \"org\", \"id\" LIMIT 10) TO STDOUT"
        );
        assert_eq!((query.key_positions.clone(), query.width()), (vec![0, 1], 3));
        assert_eq!(query.table_name(), "orders");
    }

    #[test]
    fn key_columns_outside_the_record_columns_are_selected_after_them() {
        let query =
            TableQuery::new("public", "t", vec!["b".into(), "a".into()], vec![key("k", "uuid"), key("a", "text")]).unwrap();
        let sql = query.copy_sql(None, 1);
        assert!(sql.starts_with("COPY (SELECT \"b\", \"a\", \"k\" FROM"), "{sql}");
        assert_eq!((query.key_positions.clone(), query.width()), (vec![2, 1], 3));
    }

    #[test]
    fn identifiers_are_quoted_and_schemas_qualified() {
        let query = TableQuery::new("Sales", "odd\"name", vec!["select".into()], vec![key("select", "text")]).unwrap();
        assert_eq!(query.table_name(), "Sales.odd\"name");
        let sql = query.copy_sql(Some(&["it's".into()]), 2);
        assert!(
            sql.contains("WHERE (\"select\") > (CAST(current_setting('pgkafka.snapshot_after_0') AS text))"),
            "{sql}"
        );
        assert!(sql.contains("FROM \"Sales\".\"odd\"\"name\" WHERE"), "{sql}");
        assert!(!sql.contains("it's"), "a key value was spliced into the SQL: {sql}");
        assert!(sql.ends_with("ORDER BY \"select\" LIMIT 2) TO STDOUT"), "{sql}");
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
