//! Reads what the producer needs to know of the database in one fixed set of queries: server
//! settings, the publication, and every published table with its columns and primary key.
//!
//! The result is plain data ([`Catalog`]) that [`routes::resolve`](super::routes::resolve)
//! checks without a database, so the rules can be unit-tested.

use tokio_postgres::Client;

/// How a table's old rows reach the replication stream (`pg_class.relreplident`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplicaIdentity {
    Default,
    Nothing,
    Full,
    Index,
}

impl ReplicaIdentity {
    fn from_relreplident(code: &str) -> Self {
        match code {
            "f" => Self::Full,
            "n" => Self::Nothing,
            "i" => Self::Index,
            _ => Self::Default,
        }
    }

    /// The SQL words for it, as `ALTER TABLE ... REPLICA IDENTITY` takes them.
    pub(crate) fn sql(self) -> &'static str {
        match self {
            Self::Default => "DEFAULT",
            Self::Nothing => "NOTHING",
            Self::Full => "FULL",
            Self::Index => "USING INDEX",
        }
    }
}

/// A column of a published table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CatalogColumn {
    pub(crate) name: String,
    pub(crate) not_null: bool,
}

/// A table in the publication, as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublishedTable {
    /// The table's OID: what pgoutput's Relation messages identify it by, whatever its name.
    pub(crate) oid: u32,
    pub(crate) schema: String,
    pub(crate) table: String,
    pub(crate) replica_identity: ReplicaIdentity,
    /// The publication's column list, when it publishes only some columns (PostgreSQL 15+).
    pub(crate) published_columns: Option<Vec<String>>,
    /// Every live column, in table order.
    pub(crate) columns: Vec<CatalogColumn>,
    /// The primary key's columns in key order; empty without a primary key.
    pub(crate) primary_key: Vec<String>,
}

/// The publication as the catalog has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Publication {
    Missing,
    /// Its tables, ordered by schema and name.
    Tables(Vec<PublishedTable>),
}

/// What the database says about the settings and the publication the producer streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Catalog {
    pub(crate) publication_name: String,
    pub(crate) wal_level: String,
    pub(crate) server_encoding: String,
    pub(crate) publication: Publication,
}

/// Reads the catalog: two queries however many tables the publication holds.
pub(crate) async fn fetch(client: &Client, publication: &str) -> Result<Catalog, tokio_postgres::Error> {
    let settings = client
        .query_one(
            "SELECT current_setting('wal_level'), current_setting('server_encoding'), \
             current_setting('server_version_num')::int, \
             EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1)",
            &[&publication],
        )
        .await?;
    let wal_level: String = settings.get(0);
    let server_encoding: String = settings.get(1);
    let version: i32 = settings.get(2);
    let exists: bool = settings.get(3);
    if !exists {
        return Ok(Catalog { publication_name: publication.to_owned(), wal_level, server_encoding, publication: Publication::Missing });
    }
    // PostgreSQL 15 added column lists to publications (`attnames`).
    let column_list = if version >= 150_000 { "pt.attnames::text[]" } else { "NULL::text[]" };
    let rows = client
        .query(
            &format!(
                "SELECT pt.schemaname::text, pt.tablename::text, c.relreplident::text, {column_list}, \
                 ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
                       WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum), \
                 ARRAY(SELECT a.attnotnull FROM pg_catalog.pg_attribute a \
                       WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum), \
                 ARRAY(SELECT a.attname::text FROM pg_catalog.pg_index i \
                       JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                       WHERE i.indrelid = c.oid AND i.indisprimary \
                       ORDER BY array_position(i.indkey::int2[], a.attnum)), \
                 c.oid \
                 FROM pg_catalog.pg_publication_tables pt \
                 JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname \
                 JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
                 WHERE pt.pubname = $1 ORDER BY 1, 2"
            ),
            &[&publication],
        )
        .await?;
    let tables = rows
        .iter()
        .map(|row| {
            let names: Vec<String> = row.get(4);
            let not_null: Vec<bool> = row.get(5);
            PublishedTable {
                oid: row.get(7),
                schema: row.get(0),
                table: row.get(1),
                replica_identity: ReplicaIdentity::from_relreplident(&row.get::<_, String>(2)),
                published_columns: row.get(3),
                columns: names.into_iter().zip(not_null).map(|(name, not_null)| CatalogColumn { name, not_null }).collect(),
                primary_key: row.get(6),
            }
        })
        .collect();
    Ok(Catalog {
        publication_name: publication.to_owned(),
        wal_level,
        server_encoding,
        publication: Publication::Tables(tables),
    })
}
