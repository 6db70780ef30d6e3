//! A derived `ReplicatedTable` struct decodes a real row by column name, and its errors name the
//! table, column, value and type.

use pgkafka::ReplicatedTable;
use pgkafka_tests::{pg_client, unique_name};

/// Every supported type in one table, read back as the row a `ReplicationOp` carries.
#[derive(ReplicatedTable, Debug, PartialEq)]
#[replicated(table = "typed_everything", partition_key = [id])]
struct Everything {
    id: i64,
    flag: bool,
    small: i16,
    ratio: f64,
    label: String,
    #[replicated(column = "payload_bytes")]
    payload: Vec<u8>,
    tags: Vec<Option<String>>,
    doc: serde_json::Value,
    ident: uuid::Uuid,
    amount: rust_decimal::Decimal,
    at: chrono::DateTime<chrono::Utc>,
    local: time::PrimitiveDateTime,
    maybe: Option<i32>,
    #[replicated(default)]
    not_a_column: Vec<i32>,
}

/// The columns and text values of every row of `table`, as `pgoutput` would send them.
async fn rows_as_text(pg: &tokio_postgres::Client, query: &str) -> (Vec<String>, Vec<Vec<Option<String>>>) {
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for message in pg.simple_query(query).await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
            columns = row.columns().iter().map(|c| c.name().to_owned()).collect();
            rows.push((0..row.len()).map(|i| row.get(i).map(str::to_owned)).collect());
        }
    }
    (columns, rows)
}

/// A row of every supported type, with extra columns before and after, decodes by column name into
/// a derived struct; a NULL, a wrong type and a missing column are errors naming table and column.
#[tokio::test]
async fn a_derived_struct_decodes_a_real_row_by_column_name() {
    let pg = pg_client().await;
    // The table's real name is unique per run; the struct names the fixed one, so give the op
    // that name (the decoder only uses it in errors).
    let table = unique_name("typed_everything");
    pg.batch_execute(&format!(
        "CREATE TEMP TABLE {table} (
            added_first text, id bigint, flag boolean, small smallint, ratio double precision,
            label varchar(40), payload_bytes bytea, tags text[], doc jsonb, ident uuid,
            amount numeric, at timestamptz, local timestamp, maybe int, added_later int);
         SET TimeZone = 'Asia/Kolkata';
         INSERT INTO {table} VALUES ('x', 42, true, -7, '-Infinity', 'ünï \"q\"', '\\x00ff',
            ARRAY['a', NULL, 'b c'], '{{\"k\": [1]}}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
            '-1.2300', '2024-01-01 00:00:00+00', '2024-02-29 23:59:59.5', NULL, 1);"
    ))
    .await
    .unwrap();
    let (columns, rows) = rows_as_text(&pg, &format!("SELECT * FROM {table}")).await;
    let row = &rows[0];
    let decoded = Everything::decode(&columns, row).unwrap();
    let expected = Everything {
        id: 42,
        flag: true,
        small: -7,
        ratio: f64::NEG_INFINITY,
        label: "ünï \"q\"".into(),
        payload: vec![0, 255],
        tags: vec![Some("a".into()), None, Some("b c".into())],
        doc: serde_json::json!({"k": [1]}),
        ident: "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".parse().unwrap(),
        amount: "-1.2300".parse().unwrap(),
        at: "2024-01-01T00:00:00Z".parse().unwrap(),
        local: time::macros::datetime!(2024-02-29 23:59:59.5),
        maybe: None,
        not_a_column: vec![],
    };
    assert_eq!(decoded, expected);

    // A value the type cannot hold: the error names table, column, value and type.
    pg.batch_execute(&format!("UPDATE {table} SET small = NULL")).await.unwrap();
    let (columns, rows) = rows_as_text(&pg, &format!("SELECT * FROM {table}")).await;
    let err = Everything::decode(&columns, &rows[0]).unwrap_err();
    assert_eq!(err.to_string(), "table typed_everything, column small: NULL cannot be decoded as i16 (use Option<..>)");

    let (columns, rows) = rows_as_text(&pg, &format!("SELECT id, label AS flag FROM {table}")).await;
    let err = Everything::decode(&columns, &rows[0]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "table typed_everything, column flag: cannot decode \"ünï \\\"q\\\"\" as bool: expected a boolean (t or f)"
    );
    let (columns, rows) = rows_as_text(&pg, &format!("SELECT id FROM {table}")).await;
    let err = Everything::decode(&columns, &rows[0]).unwrap_err();
    assert!(err.to_string().starts_with("table typed_everything: column flag is missing"), "{err}");
}
