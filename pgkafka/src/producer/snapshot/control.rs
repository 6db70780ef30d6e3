//! The durable progress and signal table of snapshots and backfills in the source database
//! (default `public.pgkafka_snapshots`): one row per (slot, table, run) with its state and the
//! last key whose chunk Kafka acknowledged.
//!
//! Only the producer of the slot writes its rows, except for requests (`pending`) and cancels,
//! which anyone may write. Progress is recorded only after Kafka acknowledged the chunk's
//! records, so a `last_key` never runs ahead of what consumers can read.

use std::fmt;

use pgkafka_common::ident::{qualified, TableName};
use tokio_postgres::Client;

/// The default control table.
pub(crate) const DEFAULT_TABLE: &str = "public.pgkafka_snapshots";

/// Why a run reads a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RunKind {
    /// The initial snapshot, at the slot's consistent point.
    Initial,
    /// An on-demand backfill while streaming.
    Backfill,
}

impl RunKind {
    /// As the `kind` column (and the `pgkafka.snapshot` header) spell it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Backfill => "backfill",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "initial" => Some(Self::Initial),
            "backfill" => Some(Self::Backfill),
            _ => None,
        }
    }
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RunState {
    /// Requested, not started.
    Pending,
    /// Being read (or was, by a producer that stopped).
    Running,
    /// Every row was read and acknowledged by Kafka.
    Done,
    /// Cancelled on request.
    Cancelled,
    /// Given up; `error` says why.
    Failed,
}

impl RunState {
    /// As the `state` column spells it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Done => "done",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Running, Self::Done, Self::Cancelled, Self::Failed]
            .into_iter()
            .find(|s| s.as_str() == text)
    }

    /// Whether the run still has work to do.
    pub(crate) fn is_open(self) -> bool {
        matches!(self, Self::Pending | Self::Running)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the control table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) id: i64,
    pub(crate) slot_name: String,
    /// The records' `table_name` of the table.
    pub(crate) table_name: String,
    pub(crate) kind: RunKind,
    pub(crate) state: RunState,
    /// The last key acknowledged by Kafka, `None` for "from the start".
    pub(crate) last_key: Option<Vec<String>>,
    pub(crate) rows_read: i64,
    pub(crate) chunks: i64,
    /// Timestamps as PostgreSQL prints them.
    pub(crate) requested_at: String,
    pub(crate) started_at: Option<String>,
    pub(crate) finished_at: Option<String>,
    pub(crate) error: Option<String>,
}

/// The control table: its name and SQL. Methods run on a client the caller owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ControlTable {
    schema: String,
    table: String,
    /// `"schema"."table"`.
    quoted: String,
}

const COLUMNS: &str = "id, slot_name, table_name, kind, state, last_key, rows_read, chunks, \
    requested_at::text, started_at::text, finished_at::text, error";

impl ControlTable {
    /// The control table named `name` (`schema.table`, or a bare name for `public`).
    ///
    /// # Errors
    /// A message when the name is empty.
    pub(crate) fn new(name: &str) -> Result<Self, String> {
        let parsed = TableName::parse(name.trim());
        if parsed.table.is_empty() || parsed.schema.is_empty() {
            return Err(format!("invalid snapshot_table {name:?}: give a table name, e.g. {DEFAULT_TABLE}"));
        }
        Ok(Self {
            schema: parsed.schema.to_owned(),
            table: parsed.table.to_owned(),
            quoted: qualified(parsed.schema, parsed.table),
        })
    }

    /// Its schema and table, to tell it apart in the publication.
    pub(crate) fn is(&self, schema: &str, table: &str) -> bool {
        self.schema == schema && self.table == table
    }

    /// The name, as records would name it.
    pub(crate) fn name(&self) -> String {
        pgkafka_common::ident::table_name(&self.schema, &self.table)
    }

    /// `CREATE TABLE IF NOT EXISTS` of the table and its index.
    pub(crate) fn create_sql(&self) -> String {
        let table = &self.quoted;
        let index = pgkafka_common::ident::quote_ident(&format!("{}_slot_state", self.table));
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (\
             id bigserial PRIMARY KEY, \
             slot_name text NOT NULL, \
             table_name text NOT NULL, \
             kind text NOT NULL CHECK (kind IN ('initial', 'backfill')), \
             state text NOT NULL DEFAULT 'pending' \
               CHECK (state IN ('pending', 'running', 'done', 'cancelled', 'failed')), \
             last_key text[], \
             rows_read bigint NOT NULL DEFAULT 0, \
             chunks bigint NOT NULL DEFAULT 0, \
             requested_at timestamptz NOT NULL DEFAULT now(), \
             started_at timestamptz, \
             finished_at timestamptz, \
             error text); \
             CREATE INDEX IF NOT EXISTS {index} ON {table} (slot_name, state)"
        )
    }

    /// Creates the table if it does not exist.
    ///
    /// # Errors
    /// The database error, naming the table.
    pub(crate) async fn ensure(&self, client: &Client) -> Result<(), String> {
        client
            .batch_execute(&self.create_sql())
            .await
            .map_err(|e| format!("creating the snapshot control table {}: {e}", self.name()))
    }

    fn error(&self, what: &str, e: &tokio_postgres::Error) -> String {
        format!("{what} in the snapshot control table {}: {e}", self.name())
    }

    /// Requests runs of `kind` for `tables` of `slot`; returns the new rows' ids.
    ///
    /// # Errors
    /// The database error.
    pub(crate) async fn enqueue(
        &self,
        client: &Client,
        slot: &str,
        tables: &[String],
        kind: RunKind,
    ) -> Result<Vec<i64>, String> {
        let rows = client
            .query(
                &format!(
                    "INSERT INTO {} (slot_name, table_name, kind) SELECT $1, t, $3 FROM unnest($2::text[]) \
                     WITH ORDINALITY AS u(t, n) ORDER BY n RETURNING id",
                    self.quoted
                ),
                &[&slot, &tables, &kind.as_str()],
            )
            .await
            .map_err(|e| self.error("requesting runs", &e))?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Marks this slot's open runs of `kind` as running (a run left `running` by a producer that
    /// stopped is taken over) and returns them, oldest first.
    ///
    /// # Errors
    /// The database error.
    pub(crate) async fn claim(&self, client: &Client, slot: &str, kind: RunKind) -> Result<Vec<Run>, String> {
        let rows = client
            .query(
                &format!(
                    "UPDATE {} SET state = 'running', started_at = COALESCE(started_at, now()) \
                     WHERE slot_name = $1 AND kind = $2 AND state IN ('pending', 'running') RETURNING {COLUMNS}",
                    self.quoted
                ),
                &[&slot, &kind.as_str()],
            )
            .await
            .map_err(|e| self.error("claiming runs", &e))?;
        let mut runs = rows.iter().map(|row| self.run(row)).collect::<Result<Vec<_>, _>>()?;
        runs.sort_by_key(|run| run.id);
        Ok(runs)
    }

    /// Records a chunk Kafka acknowledged: its last key and row count. Returns `false` when the
    /// run is no longer running (cancelled meanwhile).
    ///
    /// # Errors
    /// The database error.
    pub(crate) async fn progress(
        &self,
        client: &Client,
        id: i64,
        last_key: &[String],
        rows: i64,
    ) -> Result<bool, String> {
        let updated = client
            .execute(
                &format!(
                    "UPDATE {} SET last_key = $2, rows_read = rows_read + $3, chunks = chunks + 1 \
                     WHERE id = $1 AND state = 'running'",
                    self.quoted
                ),
                &[&id, &last_key, &rows],
            )
            .await
            .map_err(|e| self.error("recording progress", &e))?;
        Ok(updated == 1)
    }

    /// Ends a run: `done`, `failed` (with `error`) or `cancelled`. Only an open run changes.
    ///
    /// # Errors
    /// The database error.
    pub(crate) async fn finish(
        &self,
        client: &Client,
        id: i64,
        state: RunState,
        error: Option<&str>,
    ) -> Result<(), String> {
        client
            .execute(
                &format!(
                    "UPDATE {} SET state = $2, finished_at = now(), error = $3 \
                     WHERE id = $1 AND state IN ('pending', 'running')",
                    self.quoted
                ),
                &[&id, &state.as_str(), &error],
            )
            .await
            .map_err(|e| self.error("ending a run", &e))?;
        Ok(())
    }

    /// Cancels the open runs of `slot` (of one table when `table` is given); returns how many.
    ///
    /// # Errors
    /// The database error.
    pub(crate) async fn cancel(&self, client: &Client, slot: &str, table: Option<&str>) -> Result<u64, String> {
        client
            .execute(
                &format!(
                    "UPDATE {} SET state = 'cancelled', finished_at = now() \
                     WHERE slot_name = $1 AND ($2::text IS NULL OR table_name = $2) AND state IN ('pending', 'running')",
                    self.quoted
                ),
                &[&slot, &table],
            )
            .await
            .map_err(|e| self.error("cancelling runs", &e))
    }

    /// The runs of `slot` (every slot's for `None`), oldest first.
    ///
    /// # Errors
    /// The database error.
    pub(crate) async fn list(&self, client: &Client, slot: Option<&str>) -> Result<Vec<Run>, String> {
        let rows = client
            .query(
                &format!("SELECT {COLUMNS} FROM {} WHERE $1::text IS NULL OR slot_name = $1 ORDER BY id", self.quoted),
                &[&slot],
            )
            .await
            .map_err(|e| self.error("listing runs", &e))?;
        rows.iter().map(|row| self.run(row)).collect()
    }

    fn run(&self, row: &tokio_postgres::Row) -> Result<Run, String> {
        let kind: String = row.get(3);
        let state: String = row.get(4);
        let id: i64 = row.get(0);
        let bad = |column: &str, value: &str| format!("run {id} in {} has an unknown {column} {value:?}", self.name());
        Ok(Run {
            id,
            slot_name: row.get(1),
            table_name: row.get(2),
            kind: RunKind::parse(&kind).ok_or_else(|| bad("kind", &kind))?,
            state: RunState::parse(&state).ok_or_else(|| bad("state", &state))?,
            last_key: row.get(5),
            rows_read: row.get(6),
            chunks: row.get(7),
            requested_at: row.get(8),
            started_at: row.get(9),
            finished_at: row.get(10),
            error: row.get(11),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_default_name_is_schema_qualified_and_quoted() {
        let control = ControlTable::new(DEFAULT_TABLE).unwrap();
        assert!(control.is("public", "pgkafka_snapshots"));
        assert_eq!(control.name(), "pgkafka_snapshots");
        let sql = control.create_sql();
        assert!(sql.starts_with("CREATE TABLE IF NOT EXISTS \"public\".\"pgkafka_snapshots\" ("), "{sql}");
        assert!(sql.contains("ON \"public\".\"pgkafka_snapshots\" (slot_name, state)"), "{sql}");
    }

    #[test]
    fn a_bare_name_is_in_public_and_odd_names_are_quoted() {
        let control = ControlTable::new("Ops.snap\"s").unwrap();
        assert!(control.is("Ops", "snap\"s"));
        assert!(control.create_sql().contains("\"Ops\".\"snap\"\"s\""));
        assert!(ControlTable::new("snaps").unwrap().is("public", "snaps"));
        assert!(ControlTable::new(" ").is_err());
    }

    #[test]
    fn states_and_kinds_round_trip() {
        for state in [RunState::Pending, RunState::Running, RunState::Done, RunState::Cancelled, RunState::Failed] {
            assert_eq!(RunState::parse(state.as_str()), Some(state));
        }
        assert!(RunState::Running.is_open() && !RunState::Done.is_open());
        assert_eq!(RunKind::parse("backfill"), Some(RunKind::Backfill));
        assert_eq!(RunKind::parse("other"), None);
    }
}
