//! Startup checks of the database against the configuration, and the table → topic routes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use pgkafka_common::{Lsn, TopicInfo};

use super::ProducerError;

/// Where the changes of one published table go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableRoute {
    pub(crate) schema: String,
    pub(crate) table: String,
    /// `table` for tables in `public`, `schema.table` otherwise: the records' `table_name`.
    pub(crate) table_name: String,
    pub(crate) topic: String,
    /// Partition-key columns: the topic map's, or the primary key's when it names none.
    pub(crate) key_columns: Vec<String>,
}

/// The routes of every published table, by (schema, table).
#[derive(Debug, Clone, Default)]
pub(crate) struct Routes {
    by_table: HashMap<(String, String), Arc<TableRoute>>,
}

impl Routes {
    pub(crate) fn get(&self, schema: &str, table: &str) -> Option<&Arc<TableRoute>> {
        self.by_table.get(&(schema.to_owned(), table.to_owned()))
    }

    /// Every route, ordered by table name.
    pub(crate) fn all(&self) -> impl Iterator<Item = &TableRoute> {
        let mut routes: Vec<&TableRoute> = self.by_table.values().map(AsRef::as_ref).collect();
        routes.sort_by(|a, b| a.table_name.cmp(&b.table_name));
        routes.into_iter()
    }

    pub(crate) fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.by_table.values().map(|r| r.topic.clone()).collect();
        topics.sort();
        topics.dedup();
        topics
    }
}

/// The display name of a table in records and messages.
pub(crate) fn table_name(schema: &str, table: &str) -> String {
    if schema == "public" {
        table.to_owned()
    } else {
        format!("{schema}.{table}")
    }
}

/// `name` as an SQL identifier, quoted when it needs to be.
pub(crate) fn quote_ident(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// Replication slot names PostgreSQL accepts: lower-case letters, digits and underscores.
pub(crate) fn validate_slot_name(slot: &str) -> Result<(), ProducerError> {
    let valid = !slot.is_empty()
        && slot.len() <= 63
        && slot.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ProducerError::Config(format!(
            "invalid replication slot name {slot:?}: PostgreSQL allows 1 to 63 lower-case letters, digits and underscores"
        )))
    }
}

#[derive(Debug)]
struct PublishedTable {
    oid: u32,
    schema: String,
    table: String,
    replica_identity: char,
    /// The publication's column list, when it publishes only some columns (PostgreSQL 15+).
    published_columns: Option<Vec<String>>,
}

/// Checks the server, the publication and every table against the topic map, and returns the
/// routes. All problems are reported together, each naming the table or column and the fix.
pub(crate) async fn check(
    client: &tokio_postgres::Client,
    publication: &str,
    topic_map: &HashMap<String, TopicInfo>,
) -> Result<Routes, ProducerError> {
    let pg = |e: tokio_postgres::Error| ProducerError::Postgres(format!("checking the database: {e}"));
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await.map_err(pg)?.get(0);
    if wal_level != "logical" {
        return Err(ProducerError::Schema(format!(
            "the server runs with wal_level={wal_level}; logical replication needs wal_level=logical \
             (set it in postgresql.conf or with ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)"
        )));
    }
    let encoding: String = client.query_one("SHOW server_encoding", &[]).await.map_err(pg)?.get(0);
    if encoding != "UTF8" {
        return Err(ProducerError::Schema(format!(
            "the database encoding is {encoding}; pgkafka publishes text as JSON strings and needs a UTF8 database"
        )));
    }
    let exists = client
        .query_opt("SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1", &[&publication])
        .await
        .map_err(pg)?
        .is_some();
    if !exists {
        return Err(ProducerError::Schema(format!(
            "publication {publication:?} does not exist; create it with CREATE PUBLICATION {} FOR TABLE <tables>",
            quote_ident(publication)
        )));
    }
    // PostgreSQL 15 added column lists to publications (`attnames`).
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(pg)?
        .get(0);
    let column_list = if version >= 150_000 { "pt.attnames::text[]" } else { "NULL::text[]" };
    let rows = client
        .query(
            &format!(
                "SELECT c.oid, pt.schemaname::text, pt.tablename::text, c.relreplident::text, {column_list} \
                 FROM pg_catalog.pg_publication_tables pt \
                 JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname \
                 JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
                 WHERE pt.pubname = $1 ORDER BY 2, 3"
            ),
            &[&publication],
        )
        .await
        .map_err(pg)?;
    let published: Vec<PublishedTable> = rows
        .iter()
        .map(|row| PublishedTable {
            oid: row.get(0),
            schema: row.get(1),
            table: row.get(2),
            replica_identity: row.get::<_, String>(3).chars().next().unwrap_or('d'),
            published_columns: row.get(4),
        })
        .collect();

    let mut problems: Vec<String> = Vec::new();
    if topic_map.is_empty() {
        problems.push("the topic map is empty; give every published table an entry".to_owned());
    }

    // Resolve every topic-map key to exactly one published table.
    let mut entry_of: HashMap<usize, (&str, &TopicInfo)> = HashMap::new();
    let mut keys: Vec<&String> = topic_map.keys().collect();
    keys.sort();
    for key in keys {
        let Some(info) = topic_map.get(key) else { continue };
        if info.name.trim().is_empty() {
            problems.push(format!("topic map entry {key:?} has an empty topic name"));
        }
        let matches: Vec<usize> = match key.split_once('.') {
            Some((schema, table)) => published
                .iter()
                .enumerate()
                .filter(|(_, t)| t.schema == schema && t.table == table)
                .map(|(i, _)| i)
                .collect(),
            None => {
                let in_public: Vec<usize> = published
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.schema == "public" && t.table == *key)
                    .map(|(i, _)| i)
                    .collect();
                if in_public.is_empty() {
                    published.iter().enumerate().filter(|(_, t)| t.table == *key).map(|(i, _)| i).collect()
                } else {
                    in_public
                }
            }
        };
        match matches.as_slice() {
            [] => problems.push(format!(
                "topic map entry {key:?} names a table that is not in publication {publication:?}; \
                 add it with ALTER PUBLICATION {} ADD TABLE <schema.table>, or remove the entry \
                 (tables outside schema public are written schema.table)",
                quote_ident(publication)
            )),
            [index] => {
                if let Some((other, _)) = entry_of.insert(*index, (key.as_str(), info)) {
                    problems.push(format!(
                        "topic map entries {other:?} and {key:?} both name table {}; keep one",
                        published.get(*index).map(|t| table_name(&t.schema, &t.table)).unwrap_or_default()
                    ));
                }
            }
            several => problems.push(format!(
                "topic map entry {key:?} matches {} published tables ({}); write it as schema.table",
                several.len(),
                several
                    .iter()
                    .filter_map(|i| published.get(*i))
                    .map(|t| format!("{}.{}", t.schema, t.table))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    let mut routes = Routes::default();
    for (index, table) in published.iter().enumerate() {
        let name = table_name(&table.schema, &table.table);
        let Some((_, info)) = entry_of.get(&index) else {
            problems.push(format!(
                "table {name} is in publication {publication:?} but has no topic map entry; add \"{name}\": \
                 {{\"name\": \"<topic>\", \"partition_key\": [<columns>]}}, or remove it with \
                 ALTER PUBLICATION {} DROP TABLE {}",
                quote_ident(publication),
                qualified(&table.schema, &table.table)
            ));
            continue;
        };
        if table.replica_identity != 'f' {
            problems.push(format!(
                "table {name} has REPLICA IDENTITY {}; pgkafka publishes whole old rows of updates and \
                 deletes, which needs ALTER TABLE {} REPLICA IDENTITY FULL",
                match table.replica_identity {
                    'n' => "NOTHING",
                    'i' => "USING INDEX",
                    _ => "DEFAULT",
                },
                qualified(&table.schema, &table.table)
            ));
        }
        let columns: Vec<(String, bool)> = client
            .query(
                "SELECT attname::text, attnotnull FROM pg_catalog.pg_attribute \
                 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[&table.oid],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        if let Some(list) = &table.published_columns {
            let left_out: Vec<&str> =
                columns.iter().map(|(c, _)| c.as_str()).filter(|c| !list.iter().any(|l| l == c)).collect();
            if !left_out.is_empty() {
                // With REPLICA IDENTITY FULL the column list must cover every column, or
                // PostgreSQL refuses UPDATE and DELETE on the table; and records would silently
                // lack the columns.
                problems.push(format!(
                    "publication {publication:?} publishes only some columns of table {name} (not {}); pgkafka \
                     publishes whole rows, so publish every column: ALTER PUBLICATION {} SET TABLE {} \
                     (or DROP TABLE it and ADD TABLE it again without a column list)",
                    left_out.join(", "),
                    quote_ident(publication),
                    qualified(&table.schema, &table.table)
                ));
            }
        }
        let key_columns = if info.partition_key.is_empty() {
            let primary: Vec<String> = client
                .query(
                    "SELECT a.attname::text FROM pg_catalog.pg_index i \
                     JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                     WHERE i.indrelid = $1 AND i.indisprimary \
                     ORDER BY array_position(i.indkey::int2[], a.attnum)",
                    &[&table.oid],
                )
                .await
                .map_err(pg)?
                .iter()
                .map(|row| row.get(0))
                .collect();
            if primary.is_empty() {
                problems.push(format!(
                    "table {name} has no primary key and its topic map entry names no partition_key; \
                     name the partition-key columns, e.g. \"partition_key\": [\"{}\"]",
                    columns.first().map(|(c, _)| c.as_str()).unwrap_or("id")
                ));
            }
            primary
        } else {
            for column in &info.partition_key {
                match columns.iter().find(|(c, _)| c == column) {
                    None => problems.push(format!(
                        "partition_key column {column:?} of table {name} does not exist; its columns are {}",
                        columns.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(", ")
                    )),
                    Some((_, false)) => problems.push(format!(
                        "partition_key column {column:?} of table {name} may be NULL; make it \
                         ALTER TABLE {} ALTER COLUMN {} SET NOT NULL, or choose NOT NULL columns",
                        qualified(&table.schema, &table.table),
                        quote_ident(column)
                    )),
                    Some((_, true)) => {}
                }
            }
            info.partition_key.clone()
        };
        routes.by_table.insert(
            (table.schema.clone(), table.table.clone()),
            Arc::new(TableRoute {
                schema: table.schema.clone(),
                table: table.table.clone(),
                table_name: name,
                topic: info.name.clone(),
                key_columns,
            }),
        );
    }

    if problems.is_empty() {
        Ok(routes)
    } else {
        let mut message = format!(
            "the database does not match the producer's configuration ({} problem{}):",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
        for problem in problems {
            let _ = write!(message, "\n  - {problem}");
        }
        Err(ProducerError::Schema(message))
    }
}

/// The slot's state, after creating it if it was missing.
#[derive(Debug)]
pub(crate) struct SlotState {
    pub(crate) confirmed_flush: Lsn,
    pub(crate) active_pid: Option<i32>,
}

/// Finds the slot, creating it (pgoutput) if missing, and checks it suits the producer.
pub(crate) async fn ensure_slot(client: &tokio_postgres::Client, slot: &str) -> Result<SlotState, ProducerError> {
    if let Some(state) = inspect_slot(client, slot).await? {
        return Ok(state);
    }
    let created = client
        .query_opt("SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot])
        .await;
    match created {
        Ok(_) => tracing::info!(slot, "created logical replication slot (pgoutput)"),
        // Another producer created it first: use it.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
        Err(e) => {
            return Err(ProducerError::Postgres(format!(
                "cannot create logical replication slot {slot}: {e} (the role needs the REPLICATION attribute, \
                 and max_replication_slots must leave room)"
            )))
        }
    }
    inspect_slot(client, slot).await?.ok_or_else(|| {
        ProducerError::Postgres(format!("replication slot {slot} vanished right after it was created"))
    })
}

/// The slot's state, or `None` if it does not exist; an error if it cannot serve the producer.
pub(crate) async fn inspect_slot(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<Option<SlotState>, ProducerError> {
    let row = client
        .query_opt(
            "SELECT s.plugin::text, s.slot_type, s.database::text, current_database()::text, \
             s.active_pid, COALESCE(s.confirmed_flush_lsn, '0/0')::text \
             FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| ProducerError::Postgres(format!("inspecting replication slot {slot}: {e}")))?;
    let Some(row) = row else { return Ok(None) };
    let plugin: Option<String> = row.get(0);
    let slot_type: String = row.get(1);
    let database: Option<String> = row.get(2);
    let current: String = row.get(3);
    if slot_type != "logical" || plugin.as_deref() != Some("pgoutput") {
        return Err(ProducerError::Config(format!(
            "replication slot {slot} exists but is a {slot_type} slot with plugin {}; pgkafka needs a logical \
             pgoutput slot. Choose another slot name, or drop it with SELECT pg_drop_replication_slot('{slot}')",
            plugin.as_deref().unwrap_or("none")
        )));
    }
    if database.as_deref() != Some(current.as_str()) {
        return Err(ProducerError::Config(format!(
            "replication slot {slot} belongs to database {}, but the connection string names database {current}",
            database.as_deref().unwrap_or("?")
        )));
    }
    let confirmed: String = row.get(5);
    Ok(Some(SlotState { confirmed_flush: confirmed.parse().unwrap_or_default(), active_pid: row.get(4) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_what_needs_quoting() {
        assert_eq!(quote_ident("orders"), "orders");
        assert_eq!(quote_ident("Orders"), "\"Orders\"");
        assert_eq!(quote_ident("we\"ird name"), "\"we\"\"ird name\"");
        assert_eq!(quote_ident("1st"), "\"1st\"");
    }

    #[test]
    fn slot_names_follow_postgres_rules() {
        assert!(validate_slot_name("slot_1").is_ok());
        for bad in ["", "Slot", "slot-1", "slot;drop", &"x".repeat(64)] {
            assert!(validate_slot_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn public_tables_go_by_bare_name() {
        assert_eq!(table_name("public", "t"), "t");
        assert_eq!(table_name("sales", "t"), "sales.t");
    }
}
