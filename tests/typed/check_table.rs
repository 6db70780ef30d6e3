//! `typed::check_table` against real PostgreSQL, through the sqlx pool a consumer holds.

use pgkafka::typed::{check_table, SchemaCheckError};
use pgkafka::ReplicatedTable;
use pgkafka_tests::env;

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

/// A type that fits its table passes; one with a nullable column feeding a non-`Option` field
/// and a misspelt column gets both problems; a table that does not exist is named. Checked
/// through a pool and inside a transaction, as a consumer's handler would hold them.
#[tokio::test]
async fn derived_types_are_checked_against_the_live_table() {
    let pool = sqlx::PgPool::connect(&env().database_url).await.unwrap();
    // Read-only checks of a fixed definition: concurrent runs can share it.
    let _ = sqlx::query("CREATE TABLE IF NOT EXISTS typed_schema_check (id bigint NOT NULL, note text)")
        .execute(&pool)
        .await;

    check_table::<Fits>(&pool).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    check_table::<Fits>(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();

    let err = check_table::<Misfits>(&pool).await.unwrap_err();
    let SchemaCheckError::Mismatch { table, problems } = &err else { panic!("{err:?}") };
    assert_eq!(*table, "typed_schema_check");
    assert_eq!(problems.len(), 2, "{err}");
    assert!(problems[0].starts_with("column note may be NULL, but its field of type String cannot hold NULL"), "{err}");
    assert!(problems[1].starts_with("column nope does not exist"), "{err}");

    let err = check_table::<Nowhere>(&pool).await.unwrap_err();
    assert!(err.to_string().contains("no_such_schema.typed_schema_check does not exist"), "{err}");
}
