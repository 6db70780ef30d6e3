//! The idempotent consumer's state table: created at start when missing, otherwise checked
//! (primary key, column types) and brought up to date (the origin columns an earlier version did
//! not have), so a wrong table is refused before any op is handled.

use sqlx::PgPool;

use super::ConsumerError;

/// A column of the state table: its name, the type it is created with, and whether an existing
/// table may lack it (then it is added).
#[derive(Debug)]
struct Column {
    name: &'static str,
    create_as: &'static str,
    added_later: bool,
}

/// The columns, in order. `system_id`, `timeline` and `slot` (the origin of the stored position)
/// came after the first release; a table without them is migrated.
const COLUMNS: [Column; 9] = [
    Column { name: "group_id", create_as: "text NOT NULL", added_later: false },
    Column { name: "topic", create_as: "text NOT NULL", added_later: false },
    Column { name: "partition", create_as: "integer NOT NULL", added_later: false },
    Column { name: "lsn", create_as: "pg_lsn", added_later: false },
    Column { name: "seq_id", create_as: "numeric(20, 0)", added_later: false },
    Column { name: "updated_at", create_as: "timestamptz NOT NULL DEFAULT now()", added_later: false },
    Column { name: "system_id", create_as: "text", added_later: true },
    Column { name: "timeline", create_as: "bigint", added_later: true },
    Column { name: "slot", create_as: "text", added_later: true },
];

const PRIMARY_KEY: [&str; 3] = ["group_id", "topic", "partition"];

/// Whether `actual` (as `format_type` prints it) stores what `column` needs.
fn type_fits(column: &str, actual: &str) -> bool {
    match column {
        "group_id" | "topic" | "system_id" | "slot" => matches!(actual, "text" | "character varying"),
        "partition" => actual == "integer",
        "lsn" => actual == "pg_lsn",
        // A u64 needs 20 digits; an unconstrained numeric holds it too.
        "seq_id" => {
            actual == "numeric"
                || actual
                    .strip_prefix("numeric(")
                    .and_then(|rest| rest.strip_suffix(",0)"))
                    .and_then(|precision| precision.parse::<u32>().ok())
                    .is_some_and(|precision| precision >= 20)
        }
        "updated_at" => actual == "timestamp with time zone",
        "timeline" => actual == "bigint",
        _ => false,
    }
}

/// The expected type of `column`, for messages.
fn expected_type(column: &Column) -> &'static str {
    match column.name {
        "group_id" | "topic" | "system_id" | "slot" => "text",
        "seq_id" => "numeric(20,0)",
        "updated_at" => "timestamptz",
        _ => column.create_as.split(' ').next().unwrap_or(column.create_as),
    }
}

/// Checks an existing table's columns (`(name, type)` as `format_type` prints it) and primary key.
/// Returns the columns to add, or every problem found, each naming the table and the fix.
fn check_shape(table: &str, columns: &[(String, String)], primary_key: &[String]) -> Result<Vec<&'static Column>, Vec<String>> {
    let mut problems = Vec::new();
    let mut missing = Vec::new();
    for column in &COLUMNS {
        match columns.iter().find(|(name, _)| name == column.name) {
            Some((_, actual)) if !type_fits(column.name, actual) => problems.push(format!(
                "column {} is {actual}, expected {} (ALTER TABLE {table} ALTER COLUMN {} TYPE {} USING ...)",
                column.name,
                expected_type(column),
                column.name,
                expected_type(column)
            )),
            Some(_) => {}
            None if column.added_later => missing.push(column),
            None => problems.push(format!("column {} ({}) is missing", column.name, expected_type(column))),
        }
    }
    let mut key: Vec<&str> = primary_key.iter().map(String::as_str).collect();
    key.sort_unstable();
    let mut expected_key = PRIMARY_KEY;
    expected_key.sort_unstable();
    if key != expected_key {
        let has = if key.is_empty() { "none".to_owned() } else { primary_key.join(", ") };
        problems.push(format!(
            "the primary key must be (group_id, topic, partition), it is {has}: without it two consumers \
             could both store a position (ALTER TABLE {table} ADD PRIMARY KEY (group_id, topic, partition))"
        ));
    }
    if problems.is_empty() {
        Ok(missing)
    } else {
        Err(problems)
    }
}

/// Makes sure `table` (quoted, maybe schema-qualified) exists with the right shape: creates it
/// when missing, adds the columns later versions need, and refuses a table it cannot use.
///
/// # Errors
/// [`ConsumerError::Config`] naming the table, each wrong column and its expected type, or the
/// missing primary key; a database error when the checks cannot run.
pub(crate) async fn prepare(pool: &PgPool, table: &str) -> Result<(), ConsumerError> {
    // Two consumers starting together would race in CREATE TABLE IF NOT EXISTS (a unique
    // violation on the catalog) or in ALTER TABLE; a transaction-scoped advisory lock serialises them.
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('pgkafka_consumer_state_table'))").execute(&mut *tx).await?;
    let definition: Vec<String> = COLUMNS.iter().map(|c| format!("{} {}", c.name, c.create_as)).collect();
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {table} ({}, PRIMARY KEY ({}))",
        definition.join(", "),
        PRIMARY_KEY.join(", ")
    ))
    .execute(&mut *tx)
    .await
    .map_err(|e| refused(table, "cannot create it", e))?;
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    .bind(table)
    .fetch_all(&mut *tx)
    .await?;
    let primary_key: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
         WHERE i.indrelid = $1::regclass AND i.indisprimary",
    )
    .bind(table)
    .fetch_all(&mut *tx)
    .await?;
    let missing = check_shape(table, &columns, &primary_key).map_err(|problems| {
        ConsumerError::Config(format!("the consumer state table {table} has the wrong shape: {}", problems.join("; ")))
    })?;
    if !missing.is_empty() {
        let additions: Vec<String> = missing.iter().map(|c| format!("ADD COLUMN IF NOT EXISTS {} {}", c.name, c.create_as)).collect();
        sqlx::query(&format!("ALTER TABLE {table} {}", additions.join(", ")))
            .execute(&mut *tx)
            .await
            .map_err(|e| refused(table, "cannot add the origin columns to it", e))?;
        tracing::info!(table, "added the origin columns to the consumer state table");
    }
    tx.commit().await?;
    Ok(())
}

/// A statement on the state table the database refused (no privilege, a name taken by another
/// kind of object): a configuration problem; anything else stays a database error.
fn refused(table: &str, what: &str, error: sqlx::Error) -> ConsumerError {
    match error {
        sqlx::Error::Database(db) => ConsumerError::Config(format!("consumer state table {table}: {what}: {}", db.message())),
        other => ConsumerError::Database(other),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn columns(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, t)| ((*n).to_owned(), (*t).to_owned())).collect()
    }

    const EARLIER: [(&str, &str); 6] = [
        ("group_id", "text"),
        ("topic", "text"),
        ("partition", "integer"),
        ("lsn", "pg_lsn"),
        ("seq_id", "numeric(20,0)"),
        ("updated_at", "timestamp with time zone"),
    ];

    fn key() -> Vec<String> {
        vec!["topic".into(), "group_id".into(), "partition".into()]
    }

    #[test]
    fn the_earlier_shape_gets_the_origin_columns() {
        let missing = check_shape("s", &columns(&EARLIER), &key()).unwrap();
        assert_eq!(missing.iter().map(|c| c.name).collect::<Vec<_>>(), ["system_id", "timeline", "slot"]);
        let mut full = EARLIER.to_vec();
        full.extend([("system_id", "text"), ("timeline", "bigint"), ("slot", "character varying"), ("note", "jsonb")]);
        assert!(check_shape("s", &columns(&full), &key()).unwrap().is_empty());
    }

    #[test]
    fn wrong_types_and_a_missing_key_are_named_with_the_fix() {
        let mut wrong = EARLIER.to_vec();
        wrong[3] = ("lsn", "bigint");
        wrong[4] = ("seq_id", "numeric(10,0)");
        let problems = check_shape("\"state\"", &columns(&wrong), &[]).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("column lsn is bigint, expected pg_lsn"), "{}", problems[0]);
        assert!(problems[1].contains("column seq_id is numeric(10,0), expected numeric(20,0)"), "{}", problems[1]);
        assert!(problems[2].contains("primary key") && problems[2].contains("it is none"), "{}", problems[2]);
        assert!(problems[2].contains("ALTER TABLE \"state\" ADD PRIMARY KEY"), "{}", problems[2]);
        let missing = check_shape("s", &columns(&EARLIER[..5]), &key()).unwrap_err();
        assert_eq!(missing, ["column updated_at (timestamptz) is missing"]);
        let short_key = check_shape("s", &columns(&EARLIER), &["group_id".into(), "topic".into()]).unwrap_err();
        assert!(short_key[0].contains("it is group_id, topic"), "{short_key:?}");
    }

    #[test]
    fn seq_id_needs_twenty_digits() {
        assert!(type_fits("seq_id", "numeric"));
        assert!(type_fits("seq_id", "numeric(20,0)"));
        assert!(type_fits("seq_id", "numeric(30,0)"));
        assert!(!type_fits("seq_id", "numeric(19,0)"));
        assert!(!type_fits("seq_id", "numeric(20,2)"));
        assert!(!type_fits("seq_id", "bigint"));
    }
}
