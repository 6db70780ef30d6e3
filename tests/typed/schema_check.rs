//! Derived types checked against the live table they name (`typed::check_table`).

use pgkafka::typed::{check_table, SchemaCheckError};
use pgkafka::ReplicatedTable;
use pgkafka_tests::pg_client;

#[derive(ReplicatedTable)]
#[replicated(table = "typed_schema_check")]
#[allow(dead_code)]
struct Fits {
    id: i64,
    note: Option<String>,
    #[replicated(default)]
    added_later: Option<i32>,
}

#[derive(ReplicatedTable)]
#[replicated(table = "typed_schema_check")]
#[allow(dead_code)]
struct Misfits {
    id: i64,
    note: String,
    #[replicated(column = "nope")]
    typo: Option<i32>,
}

#[derive(ReplicatedTable)]
#[replicated(table = "typed_schema_check", schema = "no_such_schema")]
#[allow(dead_code)]
struct Nowhere {
    id: i64,
}

/// Derived types against a live table: one that fits passes; a non-Option field for a nullable
/// column and a missing column are both reported; a missing schema names the table.
#[tokio::test]
async fn derived_types_are_checked_against_the_live_table() {
    let pg = pg_client().await;
    // Read-only checks of a fixed definition: concurrent runs can share it.
    let _ = pg.batch_execute("CREATE TABLE IF NOT EXISTS typed_schema_check (id bigint NOT NULL, note text)").await;

    check_table::<Fits>(&pg).await.unwrap();

    let err = check_table::<Misfits>(&pg).await.unwrap_err();
    let SchemaCheckError::Mismatch { table, problems } = &err else { panic!("{err:?}") };
    assert_eq!(*table, "typed_schema_check");
    assert_eq!(problems.len(), 2, "{err}");
    assert!(problems[0].starts_with("column note may be NULL, but its field of type String cannot hold NULL"), "{err}");
    assert!(problems[1].starts_with("column nope does not exist"), "{err}");

    let err = check_table::<Nowhere>(&pg).await.unwrap_err();
    assert!(err.to_string().contains("no_such_schema.typed_schema_check does not exist"), "{err}");
}
