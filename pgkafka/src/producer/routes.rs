//! Decides where each published table's changes go: checks the topic map against the
//! [`Catalog`] and yields the routes, or every problem found, each naming the table or column
//! and the fix. Pure: no database, no I/O.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use pgkafka_common::ident::{qualified, quote_ident, table_name};
use pgkafka_common::TopicInfo;

use super::catalog::{Catalog, Publication, PublishedTable, ReplicaIdentity};

/// Where the changes of one published table go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableRoute {
    /// `table` for tables in `public`, `schema.table` otherwise: the records' `table_name`.
    pub(crate) table_name: String,
    pub(crate) topic: String,
    /// Partition-key columns: the topic map's, or the primary key's when it names none.
    pub(crate) key_columns: Vec<String>,
    /// The schema and table as the catalog names them now.
    pub(crate) schema: String,
    pub(crate) table: String,
    /// The columns declared `NOT NULL`.
    pub(crate) not_null: Vec<String>,
}

/// The routes of every published table, by (schema, table) and by OID.
#[derive(Debug, Clone, Default)]
pub(crate) struct Routes {
    by_table: HashMap<(String, String), Arc<TableRoute>>,
    by_oid: HashMap<u32, Arc<TableRoute>>,
    /// Published tables that are never streamed (the snapshot control table), by OID.
    skipped: Vec<u32>,
}

impl Routes {
    pub(crate) fn get(&self, schema: &str, table: &str) -> Option<&Arc<TableRoute>> {
        self.by_table.get(&(schema.to_owned(), table.to_owned()))
    }

    /// The route of a relation as the replication stream names it. By OID first: changes
    /// replayed from the slot carry the table's name as it was when they were made, so a table
    /// renamed since still finds its route; by name for a relation the catalog did not list.
    pub(crate) fn for_relation(&self, oid: u32, schema: &str, table: &str) -> Option<&Arc<TableRoute>> {
        self.by_oid.get(&oid).or_else(|| self.get(schema, table))
    }

    /// Whether changes of this relation are never streamed: the snapshot control table, should
    /// a publication `FOR ALL TABLES` include it.
    pub(crate) fn is_skipped(&self, oid: u32) -> bool {
        self.skipped.contains(&oid)
    }

    /// The schema, table and route of the table records name `table_name`.
    pub(crate) fn named(&self, table_name: &str) -> Option<(&str, &str, &Arc<TableRoute>)> {
        self.by_table
            .iter()
            .find(|(_, route)| route.table_name == table_name)
            .map(|((schema, table), route)| (schema.as_str(), table.as_str(), route))
    }

    /// Every route, ordered by table name.
    pub(crate) fn all(&self) -> impl Iterator<Item = &TableRoute> {
        let mut routes: Vec<&TableRoute> = self.by_table.values().map(AsRef::as_ref).collect();
        routes.sort_by(|a, b| a.table_name.cmp(&b.table_name));
        routes.into_iter()
    }

    /// Every topic a route names, sorted, each once.
    pub(crate) fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.by_table.values().map(|r| r.topic.clone()).collect();
        topics.sort();
        topics.dedup();
        topics
    }
}

/// A table named in a problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableRef {
    schema: String,
    table: String,
}

impl TableRef {
    fn of(table: &PublishedTable) -> Self {
        Self { schema: table.schema.clone(), table: table.table.clone() }
    }

    /// As records name it.
    fn name(&self) -> String {
        table_name(&self.schema, &self.table)
    }

    /// As SQL names it.
    fn sql(&self) -> String {
        qualified(&self.schema, &self.table)
    }
}

/// One way the database does not match the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Problem {
    WalLevel { actual: String },
    Encoding { actual: String },
    PublicationMissing { publication: String },
    EmptyTopicMap,
    EmptyTopicName { entry: String },
    EntryNotPublished { entry: String, publication: String },
    EntriesForOneTable { first: String, second: String, table: TableRef },
    AmbiguousEntry { entry: String, candidates: Vec<TableRef> },
    Unmapped { table: TableRef, publication: String },
    ReplicaIdentity { table: TableRef, actual: ReplicaIdentity },
    SomeColumnsPublished { table: TableRef, left_out: Vec<String>, publication: String },
    NoPartitionKey { table: TableRef, first_column: Option<String> },
    KeyColumnMissing { table: TableRef, column: String, columns: Vec<String> },
    KeyColumnNullable { table: TableRef, column: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WalLevel { actual } => write!(
                f,
                "the server runs with wal_level={actual}; logical replication needs wal_level=logical \
                 (set it in postgresql.conf or with ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)"
            ),
            Self::Encoding { actual } => write!(
                f,
                "the database encoding is {actual}; pgkafka publishes text as JSON strings and needs a UTF8 database"
            ),
            Self::PublicationMissing { publication } => write!(
                f,
                "publication {publication:?} does not exist; create it with CREATE PUBLICATION {} FOR TABLE <tables>",
                quote_ident(publication)
            ),
            Self::EmptyTopicMap => write!(f, "the topic map is empty; give every published table an entry"),
            Self::EmptyTopicName { entry } => write!(f, "topic map entry {entry:?} has an empty topic name"),
            Self::EntryNotPublished { entry, publication } => write!(
                f,
                "topic map entry {entry:?} names a table that is not in publication {publication:?}; \
                 add it with ALTER PUBLICATION {} ADD TABLE <schema.table>, or remove the entry \
                 (tables outside schema public are written schema.table)",
                quote_ident(publication)
            ),
            Self::EntriesForOneTable { first, second, table } => {
                write!(f, "topic map entries {first:?} and {second:?} both name table {}; keep one", table.name())
            }
            Self::AmbiguousEntry { entry, candidates } => write!(
                f,
                "topic map entry {entry:?} matches {} published tables ({}); write it as schema.table",
                candidates.len(),
                candidates.iter().map(|t| format!("{}.{}", t.schema, t.table)).collect::<Vec<_>>().join(", ")
            ),
            Self::Unmapped { table, publication } => write!(
                f,
                "table {name} is in publication {publication:?} but has no topic map entry; add \"{name}\": \
                 {{\"name\": \"<topic>\", \"partition_key\": [<columns>]}}, or remove it with \
                 ALTER PUBLICATION {} DROP TABLE {}",
                quote_ident(publication),
                table.sql(),
                name = table.name()
            ),
            Self::ReplicaIdentity { table, actual } => write!(
                f,
                "table {} has REPLICA IDENTITY {}; pgkafka publishes whole old rows of updates and \
                 deletes, which needs ALTER TABLE {} REPLICA IDENTITY FULL",
                table.name(),
                actual.sql(),
                table.sql()
            ),
            // With REPLICA IDENTITY FULL the column list must cover every column, or PostgreSQL
            // refuses UPDATE and DELETE on the table; and records would silently lack the columns.
            Self::SomeColumnsPublished { table, left_out, publication } => write!(
                f,
                "publication {publication:?} publishes only some columns of table {} (not {}); pgkafka \
                 publishes whole rows, so publish every column: ALTER PUBLICATION {} SET TABLE {} \
                 (or DROP TABLE it and ADD TABLE it again without a column list)",
                table.name(),
                left_out.join(", "),
                quote_ident(publication),
                table.sql()
            ),
            Self::NoPartitionKey { table, first_column } => write!(
                f,
                "table {} has no primary key and its topic map entry names no partition_key; \
                 name the partition-key columns, e.g. \"partition_key\": [\"{}\"]",
                table.name(),
                first_column.as_deref().unwrap_or("id")
            ),
            Self::KeyColumnMissing { table, column, columns } => write!(
                f,
                "partition_key column {column:?} of table {} does not exist; its columns are {}",
                table.name(),
                columns.join(", ")
            ),
            Self::KeyColumnNullable { table, column } => write!(
                f,
                "partition_key column {column:?} of table {} may be NULL; make it \
                 ALTER TABLE {} ALTER COLUMN {} SET NOT NULL, or choose NOT NULL columns",
                table.name(),
                table.sql(),
                quote_ident(column)
            ),
        }
    }
}

/// The problems as one message, one per line under a summary.
pub(crate) fn report(problems: &[Problem]) -> String {
    use fmt::Write as _;
    let mut message = format!(
        "the database does not match the producer's configuration ({} problem{}):",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for problem in problems {
        let _ = write!(message, "\n  - {problem}");
    }
    message
}

/// Checks the server settings, the publication and every table against the topic map, and
/// returns the routes. All problems are reported together; the server settings and the
/// publication's existence first, as nothing else can be judged without them.
#[cfg(test)]
pub(crate) fn resolve(topic_map: &HashMap<String, TopicInfo>, catalog: &Catalog) -> Result<Routes, Vec<Problem>> {
    resolve_skipping(topic_map, catalog, |_, _| false)
}

/// [`resolve`], where the published tables `never_streamed(schema, table)` names get no route
/// and need no topic-map entry: their changes are skipped (the snapshot control table, which a
/// publication `FOR ALL TABLES` includes).
pub(crate) fn resolve_skipping(
    topic_map: &HashMap<String, TopicInfo>,
    catalog: &Catalog,
    never_streamed: impl Fn(&str, &str) -> bool,
) -> Result<Routes, Vec<Problem>> {
    let mut problems = Vec::new();
    if catalog.wal_level != "logical" {
        problems.push(Problem::WalLevel { actual: catalog.wal_level.clone() });
    }
    if catalog.server_encoding != "UTF8" {
        problems.push(Problem::Encoding { actual: catalog.server_encoding.clone() });
    }
    let publication = &catalog.publication_name;
    let published = match &catalog.publication {
        Publication::Missing => {
            problems.push(Problem::PublicationMissing { publication: publication.clone() });
            return Err(problems);
        }
        Publication::Tables(_) if !problems.is_empty() => return Err(problems),
        Publication::Tables(tables) => tables,
    };
    if topic_map.is_empty() {
        problems.push(Problem::EmptyTopicMap);
    }

    // Resolve every topic-map key to exactly one published table.
    let mut entry_of: HashMap<usize, (&str, &TopicInfo)> = HashMap::new();
    let mut keys: Vec<&String> = topic_map.keys().collect();
    keys.sort();
    for key in keys {
        let Some(info) = topic_map.get(key) else { continue };
        if info.name.trim().is_empty() {
            problems.push(Problem::EmptyTopicName { entry: key.clone() });
        }
        let matches = tables_named(published, key);
        match matches.as_slice() {
            [] => problems.push(Problem::EntryNotPublished { entry: key.clone(), publication: publication.clone() }),
            [index] => {
                if let Some((other, _)) = entry_of.insert(*index, (key.as_str(), info)) {
                    if let Some(table) = published.get(*index) {
                        problems.push(Problem::EntriesForOneTable {
                            first: other.to_owned(),
                            second: key.clone(),
                            table: TableRef::of(table),
                        });
                    }
                }
            }
            several => problems.push(Problem::AmbiguousEntry {
                entry: key.clone(),
                candidates: several.iter().filter_map(|i| published.get(*i)).map(TableRef::of).collect(),
            }),
        }
    }

    let mut routes = Routes::default();
    for (index, table) in published.iter().enumerate() {
        if never_streamed(&table.schema, &table.table) && !entry_of.contains_key(&index) {
            routes.skipped.push(table.oid);
            continue;
        }
        let Some((_, info)) = entry_of.get(&index) else {
            problems.push(Problem::Unmapped { table: TableRef::of(table), publication: publication.clone() });
            continue;
        };
        let key_columns = check_table(table, info, publication, &mut problems);
        let route = Arc::new(TableRoute {
            table_name: table_name(&table.schema, &table.table),
            topic: info.name.clone(),
            key_columns,
            schema: table.schema.clone(),
            table: table.table.clone(),
            not_null: table.columns.iter().filter(|c| c.not_null).map(|c| c.name.clone()).collect(),
        });
        routes.by_oid.insert(table.oid, Arc::clone(&route));
        routes.by_table.insert((table.schema.clone(), table.table.clone()), route);
    }
    if problems.is_empty() {
        Ok(routes)
    } else {
        Err(problems)
    }
}

/// The published tables a topic-map key names: `schema.table` exactly; a bare name the `public`
/// table of that name, else any schema's.
fn tables_named(published: &[PublishedTable], key: &str) -> Vec<usize> {
    let positions = |matches: &dyn Fn(&PublishedTable) -> bool| -> Vec<usize> {
        published.iter().enumerate().filter(|(_, t)| matches(t)).map(|(i, _)| i).collect()
    };
    match key.split_once('.') {
        Some((schema, table)) => positions(&|t| t.schema == schema && t.table == table),
        None => {
            let in_public = positions(&|t| t.schema == "public" && t.table == key);
            if in_public.is_empty() {
                positions(&|t| t.table == key)
            } else {
                in_public
            }
        }
    }
}

/// Checks one mapped table and returns its partition-key columns.
fn check_table(table: &PublishedTable, info: &TopicInfo, publication: &str, problems: &mut Vec<Problem>) -> Vec<String> {
    if table.replica_identity != ReplicaIdentity::Full {
        problems.push(Problem::ReplicaIdentity { table: TableRef::of(table), actual: table.replica_identity });
    }
    if let Some(list) = &table.published_columns {
        let left_out: Vec<String> =
            table.columns.iter().filter(|c| !list.contains(&c.name)).map(|c| c.name.clone()).collect();
        if !left_out.is_empty() {
            problems.push(Problem::SomeColumnsPublished {
                table: TableRef::of(table),
                left_out,
                publication: publication.to_owned(),
            });
        }
    }
    if info.partition_key.is_empty() {
        if table.primary_key.is_empty() {
            problems.push(Problem::NoPartitionKey {
                table: TableRef::of(table),
                first_column: table.columns.first().map(|c| c.name.clone()),
            });
        }
        return table.primary_key.clone();
    }
    for column in &info.partition_key {
        match table.columns.iter().find(|c| &c.name == column) {
            None => problems.push(Problem::KeyColumnMissing {
                table: TableRef::of(table),
                column: column.clone(),
                columns: table.columns.iter().map(|c| c.name.clone()).collect(),
            }),
            Some(c) if !c.not_null => {
                problems.push(Problem::KeyColumnNullable { table: TableRef::of(table), column: column.clone() });
            }
            Some(_) => {}
        }
    }
    info.partition_key.clone()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::producer::catalog::CatalogColumn;

    fn table(schema: &str, name: &str) -> PublishedTable {
        PublishedTable {
            oid: name.bytes().map(u32::from).sum::<u32>() + schema.len() as u32 * 1000,
            schema: schema.into(),
            table: name.into(),
            replica_identity: ReplicaIdentity::Full,
            published_columns: None,
            columns: vec![
                CatalogColumn { name: "id".into(), not_null: true },
                CatalogColumn { name: "org".into(), not_null: true },
                CatalogColumn { name: "note".into(), not_null: false },
            ],
            primary_key: vec!["id".into()],
        }
    }

    fn catalog(tables: Vec<PublishedTable>) -> Catalog {
        Catalog {
            publication_name: "pub".into(),
            wal_level: "logical".into(),
            server_encoding: "UTF8".into(),
            publication: Publication::Tables(tables),
        }
    }

    fn map(entries: &[(&str, &str, &[&str])]) -> HashMap<String, TopicInfo> {
        entries.iter().map(|(k, topic, key)| ((*k).to_owned(), TopicInfo::new(*topic, key.iter().copied()))).collect()
    }

    fn problems(topic_map: &HashMap<String, TopicInfo>, catalog: &Catalog) -> Vec<String> {
        resolve(topic_map, catalog).unwrap_err().iter().map(ToString::to_string).collect()
    }

    /// A publication FOR ALL TABLES includes the snapshot control table: it needs no topic-map
    /// entry and its changes are skipped; without the rule it is an unmapped table.
    #[test]
    fn the_snapshot_control_table_is_never_streamed() {
        let control = table("public", "pgkafka_snapshots");
        let oid = control.oid;
        let catalog = catalog(vec![table("public", "orders"), control]);
        let topic_map = map(&[("orders", "t1", &[])]);
        let routes =
            resolve_skipping(&topic_map, &catalog, |schema, table| (schema, table) == ("public", "pgkafka_snapshots")).unwrap();
        assert!(routes.is_skipped(oid));
        assert!(routes.get("public", "pgkafka_snapshots").is_none());
        assert_eq!(routes.topics(), ["t1"]);
        assert!(problems(&topic_map, &catalog).iter().any(|p| p.contains("pgkafka_snapshots")));
    }

    #[test]
    fn public_tables_go_by_bare_name_and_others_by_schema_table() {
        let catalog = catalog(vec![table("public", "orders"), table("sales", "orders")]);
        let routes = resolve(&map(&[("orders", "t1", &["org"]), ("sales.orders", "t2", &[])]), &catalog).unwrap();
        let public = routes.get("public", "orders").unwrap();
        assert_eq!((public.table_name.as_str(), public.topic.as_str()), ("orders", "t1"));
        assert_eq!(public.key_columns, ["org"]);
        let sales = routes.get("sales", "orders").unwrap();
        assert_eq!((sales.table_name.as_str(), sales.key_columns.as_slice()), ("sales.orders", &["id".to_owned()][..]));
        assert_eq!(routes.topics(), ["t1", "t2"]);
    }

    #[test]
    fn a_relation_is_routed_by_oid_whatever_name_the_stream_gives_it() {
        let mut renamed = table("public", "orders_v2");
        renamed.oid = 4711;
        let routes = resolve(&map(&[("orders_v2", "orders_topic", &[])]), &catalog(vec![renamed])).unwrap();
        // A change made before the rename, replayed from the slot under the old name.
        let route = routes.for_relation(4711, "public", "orders").unwrap();
        assert_eq!((route.table_name.as_str(), route.topic.as_str()), ("orders_v2", "orders_topic"));
        assert!(routes.for_relation(4711, "other", "name").is_some());
        assert!(routes.for_relation(1, "public", "orders_v2").is_some(), "by name when the OID is unknown");
        assert!(routes.for_relation(1, "public", "orders").is_none());
    }

    #[test]
    fn a_bare_name_outside_public_matches_when_unique_and_is_ambiguous_otherwise() {
        let unique = catalog(vec![table("sales", "orders")]);
        assert!(resolve(&map(&[("orders", "t", &[])]), &unique).is_ok());
        let two = catalog(vec![table("sales", "orders"), table("stock", "orders")]);
        let found = problems(&map(&[("orders", "t", &[])]), &two);
        assert!(found[0].contains("matches 2 published tables (sales.orders, stock.orders)"), "{found:?}");
    }

    #[test]
    fn server_settings_and_a_missing_publication_are_reported_before_tables() {
        let mut bad = catalog(vec![table("public", "unmapped")]);
        bad.wal_level = "replica".into();
        let found = problems(&map(&[]), &bad);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("wal_level=replica"));
        bad.publication = Publication::Missing;
        let found = problems(&map(&[]), &bad);
        assert!(found[1].contains("CREATE PUBLICATION \"pub\""), "{found:?}");
    }

    #[test]
    fn every_table_problem_is_reported_with_its_fix() {
        let mut ident = table("public", "ident");
        ident.replica_identity = ReplicaIdentity::Default;
        let mut no_pk = table("public", "no_pk");
        no_pk.primary_key.clear();
        let mut partial = table("public", "partial");
        partial.published_columns = Some(vec!["id".into(), "org".into()]);
        let catalog = catalog(vec![ident, no_pk, partial, table("public", "keys"), table("public", "dup"), table("s", "unmapped")]);
        let topic_map = map(&[
            ("ident", "t", &[]),
            ("no_pk", "t", &[]),
            ("partial", "t", &[]),
            ("keys", "t", &["nope", "note", "org"]),
            ("stray", "t", &[]),
            ("dup", "t", &[]),
            ("public.dup", "", &[]),
        ]);
        let found = problems(&topic_map, &catalog).join("\n");
        for expected in [
            "ALTER TABLE \"public\".\"ident\" REPLICA IDENTITY FULL",
            "table no_pk has no primary key",
            "publishes only some columns of table partial (not note)",
            "partition_key column \"nope\" of table keys does not exist; its columns are id, org, note",
            "ALTER TABLE \"public\".\"keys\" ALTER COLUMN \"note\" SET NOT NULL",
            "topic map entry \"stray\" names a table that is not in publication \"pub\"",
            "topic map entries \"dup\" and \"public.dup\" both name table dup",
            "topic map entry \"public.dup\" has an empty topic name",
            "table s.unmapped is in publication \"pub\" but has no topic map entry",
        ] {
            assert!(found.contains(expected), "missing {expected:?} in:\n{found}");
        }
        assert!(!found.contains("\"org\""), "a NOT NULL key column was reported:\n{found}");
    }

    #[test]
    fn the_report_counts_its_problems() {
        let text = report(&[Problem::EmptyTopicMap, Problem::EmptyTopicMap]);
        assert!(text.starts_with("the database does not match the producer's configuration (2 problems):\n  - the topic map"));
    }
}
