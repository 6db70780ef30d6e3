//! The typed layer against the real servers: PostgreSQL renders values as text and they parse
//! back to what was inserted; derived structs decode real rows; typed routers handle ops read
//! from Kafka, inside real transactions for the idempotent flavor.

use std::fmt::Debug;

use pgkafka::text::{FromPgText, Json};
use pgkafka::ReplicatedTable;
use pgkafka_tests::{pg_client, unique_name};

/// Inserts each SQL literal into a column of `sql_type`, reads every value back twice, as the
/// output function prints it (the simple query protocol sends exactly the text `pgoutput` does)
/// and through `::text`, and checks that both parse to the expected value.
async fn round_trip<T>(sql_type: &str, cases: &[(&str, T)])
where
    T: FromPgText + PartialEq + Debug,
{
    round_trip_with(sql_type, "", cases, |a, b| a == b).await;
}

async fn round_trip_with<T>(sql_type: &str, session: &str, cases: &[(&str, T)], same: impl Fn(&T, &T) -> bool)
where
    T: FromPgText + Debug,
{
    let pg = pg_client().await;
    let table = unique_name("typed_rt");
    pg.batch_execute(&format!("{session} CREATE TEMP TABLE {table} (i int, v {sql_type})")).await.unwrap();
    for (i, (literal, _)) in cases.iter().enumerate() {
        pg.batch_execute(&format!("INSERT INTO {table} VALUES ({i}, {literal})"))
            .await
            .unwrap_or_else(|e| panic!("{sql_type}: cannot insert {literal}: {e}"));
    }
    let rows: Vec<(String, String)> = pg
        .simple_query(&format!("SELECT v, v::text FROM {table} ORDER BY i"))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => {
                Some((row.get(0).unwrap().to_owned(), row.get(1).unwrap().to_owned()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), cases.len());
    for ((literal, expected), (output, cast)) in cases.iter().zip(&rows) {
        // `::text` drops char(n)'s padding, the output function (and so pgoutput) keeps it.
        let texts = if sql_type.starts_with("char(") { vec![output] } else { vec![output, cast] };
        for text in texts {
            let parsed = T::from_pg_text(text)
                .unwrap_or_else(|e| panic!("{sql_type} {literal}: the server printed {text:?}, which does not parse: {e}"));
            assert!(
                same(&parsed, expected),
                "{sql_type} {literal}: the server printed {text:?}, parsed as {parsed:?}, expected {expected:?}"
            );
        }
    }
}

/// Like [`round_trip`], for values the parser must reject: each error must say `reason`.
async fn rejected<T: FromPgText + Debug>(sql_type: &str, session: &str, literal: &str, reason: &str) {
    let pg = pg_client().await;
    let messages = pg.simple_query(&format!("{session} SELECT ({literal})::{sql_type}")).await.unwrap();
    let text = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap().to_owned()),
            _ => None,
        })
        .unwrap();
    let err = T::from_pg_text(&text).expect_err(&format!("{sql_type} {literal} printed as {text:?} should not parse"));
    assert!(err.reason().contains(reason), "{sql_type} {literal} ({text:?}): error {err:?} does not mention {reason:?}");
}

#[tokio::test]
async fn booleans_and_integers_round_trip() {
    round_trip("boolean", &[("true", true), ("false", false)]).await;
    round_trip("smallint", &[("-32768", i16::MIN), ("32767", i16::MAX), ("0", 0)]).await;
    round_trip("integer", &[("-2147483648", i32::MIN), ("2147483647", i32::MAX), ("-1", -1)]).await;
    round_trip("bigint", &[("-9223372036854775808", i64::MIN), ("9223372036854775807", i64::MAX)]).await;
    round_trip("oid", &[("4294967295", u32::MAX)]).await;
}

#[tokio::test]
async fn floats_round_trip_with_special_values() {
    let same_f64 = |a: &f64, b: &f64| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
    round_trip_with(
        "double precision",
        "",
        &[
            ("'NaN'", f64::NAN),
            ("'Infinity'", f64::INFINITY),
            ("'-Infinity'", f64::NEG_INFINITY),
            ("0.1", 0.1),
            ("'-0'", -0.0),
            ("1.0000000000000002", 1.000_000_000_000_000_2),
            ("1e308", 1e308),
            ("'5e-324'", 5e-324),
            ("'2.2250738585072014e-308'", f64::MIN_POSITIVE),
            ("-123456789.125", -123_456_789.125),
        ],
        same_f64,
    )
    .await;
    let same_f32 = |a: &f32, b: &f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
    round_trip_with(
        "real",
        "",
        &[
            ("'NaN'", f32::NAN),
            ("'Infinity'", f32::INFINITY),
            ("'-Infinity'", f32::NEG_INFINITY),
            ("0.1", 0.1f32),
            ("3.4028235e38", f32::MAX),
            ("'1.1754944e-38'", f32::MIN_POSITIVE),
            ("'1e-45'", 1e-45f32),
        ],
        same_f32,
    )
    .await;
    // extra_float_digits = 0 (the pre-12 default some servers still set) prints rounded values
    // that are still valid floats.
    round_trip_with("double precision", "SET extra_float_digits = 0;", &[("0.5", 0.5f64)], |a, b| a == b).await;
}

#[tokio::test]
async fn text_and_character_types_round_trip() {
    let tricky = ["", "hello", "ünï 日本語 ✓", "back\\slash \"quotes\" 'single'", "line\nbreak\ttab", "  padded  ", "NULL", "{a,b}"];
    let cases: Vec<(String, String)> =
        tricky.iter().map(|s| (format!("'{}'", s.replace('\'', "''")), (*s).to_owned())).collect();
    let cases: Vec<(&str, String)> = cases.iter().map(|(l, v)| (l.as_str(), v.clone())).collect();
    round_trip("text", &cases).await;
    round_trip("varchar(40)", &cases).await;
    round_trip("char(5)", &[("'ab'", "ab   ".to_owned()), ("'abcde'", "abcde".to_owned())]).await;
    round_trip("\"char\"", &[("'x'", 'x')]).await;
    round_trip("char(1)", &[("'é'", 'é')]).await;
    round_trip("name", &[("'pg_class'", "pg_class".to_owned())]).await;
}

#[tokio::test]
async fn bytea_round_trips_in_both_output_formats() {
    let all_bytes: Vec<u8> = (0..=255).collect();
    let all_literal = format!(
        "'\\x{}'",
        all_bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let cases = [("''::bytea", vec![]), ("'\\x00ff10'", vec![0, 255, 16]), (all_literal.as_str(), all_bytes.clone())];
    round_trip("bytea", &cases).await;
    round_trip_with("bytea", "SET bytea_output = 'escape';", &cases, |a: &Vec<u8>, b| a == b).await;
}

#[tokio::test]
async fn arrays_round_trip_with_quotes_nulls_and_bounds() {
    round_trip(
        "int[]",
        &[
            ("'{}'", vec![]),
            ("'{1,NULL,-3}'", vec![Some(1), None, Some(-3)]),
            ("'[0:2]={7,8,9}'", vec![Some(7), Some(8), Some(9)]),
        ],
    )
    .await;
    let s = |v: &str| Some(v.to_owned());
    round_trip(
        "text[]",
        &[(
            r#"ARRAY['a', 'b c', NULL, 'q"uote', 'back\slash', '', 'NULL', 'null', ' lead', 'trail ', '{x}', 'com,ma', 'ünï']"#,
            vec![
                s("a"),
                s("b c"),
                None,
                s("q\"uote"),
                s("back\\slash"),
                s(""),
                s("NULL"),
                s("null"),
                s(" lead"),
                s("trail "),
                s("{x}"),
                s("com,ma"),
                s("ünï"),
            ],
        )],
    )
    .await;
    round_trip("boolean[]", &[("'{t,f}'", vec![true, false])]).await;
    round_trip("float8[]", &[("'{1.5,Infinity,-Infinity}'", vec![1.5, f64::INFINITY, f64::NEG_INFINITY])]).await;
    round_trip("bytea[]", &[(r"ARRAY['\x00ff'::bytea, '\x'::bytea]", vec![vec![0u8, 255], vec![]])]).await;
    rejected::<Vec<i32>>("int[]", "", "'{{1,2},{3,4}}'", "multi-dimensional").await;
    rejected::<Vec<i32>>("int[]", "", "'{1,NULL}'", "NULL").await;
}

#[tokio::test]
async fn json_and_jsonb_round_trip() {
    let value = serde_json::json!({"a": [1, 2.5, {"b": null}], "s": "ü \"q\" \\", "t": true});
    let literal = format!("'{}'", value.to_string().replace('\'', "''"));
    round_trip("json", &[(literal.as_str(), value.clone())]).await;
    round_trip("jsonb", &[(literal.as_str(), value.clone()), ("'[]'", serde_json::json!([]))]).await;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Dims {
        w: u32,
        h: u32,
    }
    round_trip("jsonb", &[(r#"'{"h": 2, "w": 1, "extra": 0}'"#, Json(Dims { w: 1, h: 2 }))]).await;
}

#[tokio::test]
async fn uuids_round_trip() {
    let id = uuid::Uuid::parse_str("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
    round_trip(
        "uuid",
        &[("'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'", id), ("'00000000-0000-0000-0000-000000000000'", uuid::Uuid::nil())],
    )
    .await;
}

#[tokio::test]
async fn numerics_round_trip_and_nan_is_rejected() {
    use rust_decimal::Decimal;
    let d = |s: &str| s.parse::<Decimal>().unwrap();
    // Decimal equality ignores scale, so compare the printed form too: 1.50 stays 1.50.
    round_trip_with(
        "numeric",
        "",
        &[
            ("0", d("0")),
            ("-123.4500", d("-123.4500")),
            ("79228162514264337593543950335", Decimal::MAX),
            ("-79228162514264337593543950335", Decimal::MIN),
            ("0.0000000000000000000000000001", d("0.0000000000000000000000000001")),
            ("1.50", d("1.50")),
        ],
        |a: &Decimal, b| a == b && a.to_string() == b.to_string(),
    )
    .await;
    rejected::<Decimal>("numeric", "", "'NaN'", "NaN").await;
    rejected::<Decimal>("numeric", "", "79228162514264337593543950336", "fits").await;
}

#[tokio::test]
async fn chrono_dates_times_and_timestamps_round_trip() {
    use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Utc};
    let date = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
    let ts = |y, m, d, h, mi, s, us| date(y, m, d).and_hms_micro_opt(h, mi, s, us).unwrap();
    round_trip(
        "timestamp",
        &[
            ("'2024-02-29 13:45:01.123456'", ts(2024, 2, 29, 13, 45, 1, 123_456)),
            ("'0001-01-01 00:00:00'", ts(1, 1, 1, 0, 0, 0, 0)),
            ("'12345-06-07 08:09:10.5'", ts(12345, 6, 7, 8, 9, 10, 500_000)),
            ("'1999-12-31 23:59:59.999999'", ts(1999, 12, 31, 23, 59, 59, 999_999)),
        ],
    )
    .await;
    round_trip("date", &[("'2024-02-29'", date(2024, 2, 29)), ("'0001-01-01'", date(1, 1, 1))]).await;
    round_trip(
        "time",
        &[
            ("'00:00:00'", NaiveTime::from_hms_opt(0, 0, 0).unwrap()),
            ("'23:59:59.999999'", NaiveTime::from_hms_micro_opt(23, 59, 59, 999_999).unwrap()),
        ],
    )
    .await;

    // timestamptz prints in the session's TimeZone, with every offset form PostgreSQL has:
    // whole hours, hours and minutes, and (for historical local mean time) seconds.
    let instant = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
    for zone in ["UTC", "Asia/Kolkata", "America/St_Johns", "Europe/Amsterdam", "Pacific/Chatham", "America/Los_Angeles"] {
        let session = format!("SET TimeZone = '{zone}';");
        let cases = [
            ("'2024-01-01 00:00:00+00'", instant("2024-01-01T00:00:00Z")),
            ("'2024-07-01 12:34:56.789+00'", instant("2024-07-01T12:34:56.789Z")),
            ("'1900-01-01 00:00:00+00'", instant("1900-01-01T00:00:00Z")),
            ("'1850-06-01 12:00:00+00'", instant("1850-06-01T12:00:00Z")),
        ];
        round_trip_with("timestamptz", &session, &cases, |a: &DateTime<Utc>, b| a == b).await;
        let fixed: Vec<(&str, DateTime<FixedOffset>)> = cases.iter().map(|(l, v)| (*l, v.fixed_offset())).collect();
        round_trip_with("timestamptz", &session, &fixed, |a: &DateTime<FixedOffset>, b| a == b).await;
    }
    let amsterdam_1900 = "SET TimeZone = 'Europe/Amsterdam';";
    let pg = pg_client().await;
    let printed = pg
        .simple_query(&format!("{amsterdam_1900} SELECT '1900-01-01 00:00:00+00'::timestamptz"))
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap().to_owned()),
            _ => None,
        })
        .unwrap();
    assert_eq!(printed, "1900-01-01 00:19:32+00:19:32", "the seconds offset form is covered");

    rejected::<NaiveDate>("date", "", "'0044-03-15 BC'", "BC dates are not supported").await;
    rejected::<NaiveDateTime>("timestamp", "", "'0044-03-15 12:00:00 BC'", "BC dates are not supported").await;
    rejected::<DateTime<Utc>>("timestamptz", "", "'0044-03-15 12:00:00+00 BC'", "BC dates are not supported").await;
    rejected::<NaiveDateTime>("timestamp", "", "'infinity'", "infinity").await;
    rejected::<NaiveDate>("date", "", "'-infinity'", "infinity").await;
    rejected::<NaiveTime>("time", "", "'24:00:00'", "out of range").await;
    rejected::<NaiveDate>("date", "", "'5874897-12-31'", "out of range").await;
    rejected::<NaiveDateTime>("timestamptz", "SET TimeZone = 'UTC';", "'2024-01-01 00:00:00+00'", "timestamptz").await;
}

#[tokio::test]
async fn time_crate_dates_times_and_timestamps_round_trip() {
    use time::macros::{date, datetime, time};
    use time::{Date, OffsetDateTime, PrimitiveDateTime, Time};
    round_trip::<PrimitiveDateTime>(
        "timestamp",
        &[
            ("'2024-02-29 13:45:01.123456'", datetime!(2024-02-29 13:45:01.123456)),
            ("'0001-01-01 00:00:00'", datetime!(0001-01-01 00:00:00)),
        ],
    )
    .await;
    round_trip::<Date>("date", &[("'9999-12-31'", date!(9999-12-31))]).await;
    round_trip::<Time>("time", &[("'12:00:00.000001'", time!(12:00:00.000001))]).await;
    for zone in ["UTC", "Asia/Kolkata", "Europe/Amsterdam"] {
        round_trip_with::<OffsetDateTime>(
            "timestamptz",
            &format!("SET TimeZone = '{zone}';"),
            &[
                ("'2024-07-01 12:34:56.789+00'", datetime!(2024-07-01 12:34:56.789 UTC)),
                ("'1900-01-01 00:00:00+00'", datetime!(1900-01-01 00:00:00 UTC)),
            ],
            |a, b| a == b,
        )
        .await;
    }
    rejected::<Date>("date", "", "'0044-03-15 BC'", "BC dates are not supported").await;
    rejected::<Date>("date", "", "'10000-01-01'", "out of range").await;
}

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

// ---------------------------------------------------------------------------------------------
// Typed routers handling ops that went through the real broker.
// ---------------------------------------------------------------------------------------------

mod routing {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use pgkafka::typed::{handler_fn, IdempotentRouter, IdempotentTableHandler, Router, TableHandler};
    use pgkafka::{
        async_trait::async_trait, BasicApplication, Change, Consumer, ConsumerError, DecodeError, IdempotentApplication,
        Lsn, ReplicatedTable, ReplicationOp, TypedOp,
    };
    use pgkafka_tests::{create_topic, env, kafka_config, read_topic, unique_name};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use sqlx::{Postgres, Transaction};

    #[derive(ReplicatedTable, Debug, Clone, PartialEq)]
    #[replicated(table = "inventory", topic = "inventory_topic", partition_key = [organization_id])]
    pub(super) struct Inventory {
        #[replicated(column = "org_id")]
        organization_id: i64,
        sku: String,
        quantity: Option<i32>,
    }

    #[derive(ReplicatedTable, Debug, Clone, PartialEq)]
    #[replicated(table = "orders", schema = "sales", topic = "orders_topic")]
    pub(super) struct Order {
        id: i64,
        total_cents: i64,
    }

    /// Sends each op as JSON to `topic`, keyed like the producer keys it, and reads the topic
    /// back: the ops a consumer of `topic` would get, in partition order.
    async fn through_kafka(topic: &str, ops: &[ReplicationOp]) -> Vec<ReplicationOp> {
        create_topic(topic, 1).await;
        let producer: FutureProducer = kafka_config().set("acks", "all").create().unwrap();
        for op in ops {
            let key = pgkafka::key::encode_key(op.op.key_row().iter().take(1).map(Option::as_deref));
            let payload = serde_json::to_vec(op).unwrap();
            producer
                .send(FutureRecord::to(topic).key(&key).payload(&payload), Duration::from_secs(10))
                .await
                .unwrap_or_else(|(e, _)| panic!("send failed: {e}"));
        }
        read_topic(topic).await.iter().map(|r| r.op()).collect()
    }

    fn op(table: &str, cols: &[&str], lsn: u64, seq_id: u64, op: pgkafka::Op) -> ReplicationOp {
        ReplicationOp {
            table_name: table.into(),
            col_names: cols.iter().map(|&c| c.to_owned()).collect(),
            lsn,
            seq_id,
            op,
        }
    }

    fn row(values: &[Option<&str>]) -> Vec<Option<String>> {
        values.iter().map(|v| v.map(str::to_owned)).collect()
    }

    /// Records what it is handed, by method, to check the provided `handle` dispatch.
    #[derive(Default, Clone)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    #[async_trait]
    impl TableHandler<Inventory> for Recorder {
        async fn insert(&self, row: Inventory) -> Result<(), ConsumerError> {
            self.0.lock().unwrap().push(format!("insert {} {} {:?}", row.organization_id, row.sku, row.quantity));
            Ok(())
        }
        async fn update(&self, old: Inventory, new: Inventory) -> Result<(), ConsumerError> {
            self.0.lock().unwrap().push(format!("update {:?} -> {:?}", old.quantity, new.quantity));
            Ok(())
        }
        async fn delete(&self, row: Inventory) -> Result<(), ConsumerError> {
            self.0.lock().unwrap().push(format!("delete {}", row.sku));
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_router_hands_typed_rows_of_each_table_to_its_handler() {
        let inv_cols = ["org_id", "sku", "quantity", "added_later"];
        let ops = through_kafka(
            &unique_name("typed_route"),
            &[
                op("inventory", &inv_cols, 10, 0, pgkafka::Op::Insert(row(&[Some("42"), Some("A-1"), Some("5"), Some("x")]))),
                op("sales.orders", &["id", "total_cents"], 10, 1, pgkafka::Op::Insert(row(&[Some("7"), Some("1999")]))),
                op(
                    "inventory",
                    &inv_cols,
                    11,
                    0,
                    pgkafka::Op::Update((
                        row(&[Some("42"), Some("A-1"), Some("5"), None]),
                        row(&[Some("42"), Some("A-1"), None, None]),
                    )),
                ),
                op("public.inventory", &inv_cols, 12, 0, pgkafka::Op::Delete(row(&[Some("42"), Some("A-1"), None, None]))),
            ],
        )
        .await;
        assert_eq!(ops.len(), 4);

        let inventory = Recorder::default();
        let orders: Arc<Mutex<Vec<TypedOp<Order>>>> = Arc::default();
        let seen = orders.clone();
        let router = Router::new().route::<Inventory>(inventory.clone()).route(handler_fn(move |op: TypedOp<Order>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(op);
                Ok(())
            }
        }));
        assert_eq!(router.topics(), ["inventory_topic", "orders_topic"]);
        assert_eq!(router.topic_map(), pgkafka::topic_map![Inventory, Order]);
        for op in &ops {
            router.handle_message(op).await.unwrap();
        }
        assert_eq!(
            *inventory.0.lock().unwrap(),
            ["insert 42 A-1 Some(5)", "update Some(5) -> None", "delete A-1"]
        );
        assert_eq!(
            *orders.lock().unwrap(),
            [TypedOp { lsn: Lsn(10), seq_id: 1, change: Change::Insert(Order { id: 7, total_cents: 1999 }) }]
        );
    }

    #[tokio::test]
    async fn unknown_tables_stop_the_consumer_unless_ignored_and_bad_rows_name_their_column() {
        let ops = through_kafka(
            &unique_name("typed_unknown"),
            &[
                op("audit_log", &["id"], 1, 0, pgkafka::Op::Insert(row(&[Some("1")]))),
                op("inventory", &["org_id", "sku"], 2, 0, pgkafka::Op::Insert(row(&[Some("forty-two"), Some("A")]))),
                op("inventory", &["sku"], 3, 0, pgkafka::Op::Insert(row(&[Some("A")]))),
            ],
        )
        .await;

        let strict = Router::new().route::<Inventory>(Recorder::default());
        let err = strict.handle_message(&ops[0]).await.unwrap_err();
        assert!(matches!(&err, ConsumerError::UnhandledTable { table } if table == "audit_log"), "{err:?}");
        assert!(!err.is_transient());
        assert!(err.to_string().contains("ignore_unknown_tables"), "{err}");

        let lenient = Router::new().route::<Inventory>(Recorder::default()).ignore_unknown_tables();
        lenient.handle_message(&ops[0]).await.unwrap();

        let err = lenient.handle_message(&ops[1]).await.unwrap_err();
        assert!(!err.is_transient(), "a row that does not decode fails the same way on every retry");
        let ConsumerError::Decode(DecodeError::InvalidValue { table, column, value, target, .. }) = &err else {
            panic!("{err:?}")
        };
        assert_eq!((table.as_str(), column.as_str(), value.as_str(), *target), ("inventory", "org_id", "forty-two", "i64"));
        assert_eq!(
            err.to_string(),
            "table inventory, column org_id: cannot decode \"forty-two\" as i64: expected a bigint: invalid digit found in string"
        );

        let err = lenient.handle_message(&ops[2]).await.unwrap_err();
        assert!(
            matches!(&err, ConsumerError::Decode(DecodeError::MissingColumn { column, .. }) if column == "org_id"),
            "{err:?}"
        );

        // Tables handled dynamically go to a raw fallback application.
        struct Raw(Arc<Mutex<Vec<String>>>);
        #[async_trait]
        impl BasicApplication for Raw {
            async fn handle_message(&self, op: &ReplicationOp) -> Result<(), ConsumerError> {
                self.0.lock().unwrap().push(op.table_name.clone());
                Ok(())
            }
        }
        let raw = Arc::new(Mutex::new(Vec::new()));
        let with_fallback = Router::new().route::<Inventory>(Recorder::default()).fallback(Raw(raw.clone()));
        with_fallback.handle_message(&ops[0]).await.unwrap();
        assert_eq!(*raw.lock().unwrap(), ["audit_log"]);

        // A table routed twice is a configuration mistake, reported rather than guessed at.
        let twice = Router::new().route::<Inventory>(Recorder::default()).route::<Inventory>(Recorder::default());
        assert!(matches!(twice.validate(), Err(ConsumerError::Config(_))));
    }

    /// Mirrors inventory rows into a table of the consumer's database, inside its transaction.
    struct Mirror {
        table: String,
    }

    #[async_trait]
    impl IdempotentTableHandler<Inventory> for Mirror {
        async fn insert(&self, tx: &mut Transaction<'_, Postgres>, item: Inventory) -> Result<(), ConsumerError> {
            if item.sku == "poison" {
                return Err(ConsumerError::fatal("poison row"));
            }
            sqlx::query(&format!("INSERT INTO {} (org_id, sku, quantity) VALUES ($1, $2, $3)", self.table))
                .bind(item.organization_id)
                .bind(&item.sku)
                .bind(item.quantity)
                .execute(&mut **tx)
                .await?;
            Ok(())
        }

        async fn delete(&self, tx: &mut Transaction<'_, Postgres>, item: Inventory) -> Result<(), ConsumerError> {
            sqlx::query(&format!("DELETE FROM {} WHERE sku = $1", self.table)).bind(&item.sku).execute(&mut **tx).await?;
            Ok(())
        }
    }

    #[tokio::test]
    async fn an_idempotent_router_writes_through_the_consumers_transaction() {
        let pool = sqlx::PgPool::connect(&env().database_url).await.unwrap();
        let table = unique_name("typed_mirror");
        sqlx::query(&format!("CREATE TABLE {table} (org_id bigint, sku text PRIMARY KEY, quantity int)"))
            .execute(&pool)
            .await
            .unwrap();
        let cols = ["org_id", "sku", "quantity"];
        let ops = through_kafka(
            &unique_name("typed_idem"),
            &[
                op("inventory", &cols, 1, 0, pgkafka::Op::Insert(row(&[Some("1"), Some("A"), Some("3")]))),
                op("inventory", &cols, 2, 0, pgkafka::Op::Insert(row(&[Some("1"), Some("B"), None]))),
                op("inventory", &cols, 3, 0, pgkafka::Op::Delete(row(&[Some("1"), Some("A"), None]))),
                op("inventory", &cols, 4, 0, pgkafka::Op::Insert(row(&[Some("1"), Some("poison"), None]))),
            ],
        )
        .await;
        let router = IdempotentRouter::new().route::<Inventory>(Mirror { table: table.clone() });
        assert_eq!(router.topics(), ["inventory_topic"]);
        for op in &ops[..3] {
            let mut tx = pool.begin().await.unwrap();
            router.handle_message(&mut tx, op).await.unwrap();
            tx.commit().await.unwrap();
        }
        // A failing handler leaves nothing behind once its transaction is rolled back.
        let mut tx = pool.begin().await.unwrap();
        assert!(router.handle_message(&mut tx, &ops[3]).await.is_err());
        tx.rollback().await.unwrap();

        let rows: Vec<(i64, String, Option<i32>)> =
            sqlx::query_as(&format!("SELECT org_id, sku, quantity FROM {table} ORDER BY sku")).fetch_all(&pool).await.unwrap();
        assert_eq!(rows, [(1, "B".to_owned(), None)]);

        let mut tx = pool.begin().await.unwrap();
        let unknown = op("audit_log", &["id"], 5, 0, pgkafka::Op::Insert(row(&[Some("1")])));
        assert!(matches!(router.handle_message(&mut tx, &unknown).await, Err(ConsumerError::UnhandledTable { .. })));
        tx.rollback().await.unwrap();
        sqlx::query(&format!("DROP TABLE {table}")).execute(&pool).await.unwrap();
    }

    fn consumer<A>(group: &str, topic: &str, app: A) -> Consumer<A> {
        Consumer::new(group, [topic], env().brokers.as_str(), app)
            .kafka_option("session.timeout.ms", "6000")
            .kafka_option("heartbeat.interval.ms", "500")
            .commit_interval(Duration::from_millis(200))
    }

    #[tokio::test]
    async fn a_typed_router_runs_under_the_basic_consumer() {
        let topic = unique_name("typed_basic");
        let cols = ["org_id", "sku", "quantity"];
        let mut ops = Vec::new();
        for i in 0..20u64 {
            let sku = format!("S{i}");
            ops.push(op("inventory", &cols, 100 + i, 0, pgkafka::Op::Insert(row(&[Some("1"), Some(&sku), Some("1")]))));
        }
        through_kafka(&topic, &ops).await;

        let inventory = Recorder::default();
        let router = Router::new().route::<Inventory>(inventory.clone());
        let consumer = consumer(&unique_name("typed_basic_group"), &topic, router);
        let stop = consumer.shutdown_handle();
        let running = tokio::spawn(consumer.start_basic());
        let seen = inventory.0.clone();
        pgkafka_tests::wait_for("20 typed inserts", Duration::from_secs(60), || {
            let n = seen.lock().unwrap().len();
            async move { (n >= 20).then_some(()) }
        })
        .await;
        stop.shutdown();
        running.await.unwrap().unwrap();
        let expected: Vec<String> = (0..20).map(|i| format!("insert 1 S{i} Some(1)")).collect();
        assert_eq!(*inventory.0.lock().unwrap(), expected, "one partition: in offset order, each once");
    }

    #[tokio::test]
    async fn a_row_that_does_not_decode_stops_the_basic_consumer_with_its_context() {
        let topic = unique_name("typed_poison");
        through_kafka(
            &topic,
            &[
                op("inventory", &["org_id", "sku"], 1, 0, pgkafka::Op::Insert(row(&[Some("1"), Some("fine")]))),
                op("inventory", &["org_id", "sku"], 2, 0, pgkafka::Op::Insert(row(&[Some("1.5"), Some("bad")]))),
                op("inventory", &["org_id", "sku"], 3, 0, pgkafka::Op::Insert(row(&[Some("1"), Some("never")]))),
            ],
        )
        .await;
        let inventory = Recorder::default();
        let router = Router::new().route::<Inventory>(inventory.clone());
        let result = tokio::time::timeout(
            Duration::from_secs(60),
            consumer(&unique_name("typed_poison_group"), &topic, router).start_basic(),
        )
        .await
        .expect("the consumer should stop on its own");
        let err = result.unwrap_err();
        assert!(
            matches!(&err, ConsumerError::Decode(DecodeError::InvalidValue { column, value, .. }) if column == "org_id" && value == "1.5"),
            "{err:?}"
        );
        assert_eq!(*inventory.0.lock().unwrap(), ["insert 1 fine None"]);
    }

    #[tokio::test]
    async fn an_idempotent_router_runs_under_the_idempotent_consumer_exactly_once() {
        let pool = sqlx::PgPool::connect(&env().database_url).await.unwrap();
        let table = unique_name("typed_exactly_once");
        sqlx::query(&format!("CREATE TABLE {table} (org_id bigint, sku text PRIMARY KEY, quantity int)"))
            .execute(&pool)
            .await
            .unwrap();
        let topic = unique_name("typed_idem_topic");
        let cols = ["org_id", "sku", "quantity"];
        let insert = |lsn: u64, sku: &str| op("inventory", &cols, lsn, 0, pgkafka::Op::Insert(row(&[Some("1"), Some(sku), Some("2")])));
        // The producer may re-send after a restart: lsn 2 arrives twice.
        through_kafka(&topic, &[insert(1, "A"), insert(2, "B"), insert(2, "B"), insert(3, "C")]).await;

        let state_table = unique_name("typed_state");
        let router = IdempotentRouter::new().route::<Inventory>(Mirror { table: table.clone() });
        let consumer = consumer(&unique_name("typed_idem_group"), &topic, router).state_table(state_table.clone());
        let stop = consumer.shutdown_handle();
        let url = env().database_url.clone();
        let running = tokio::spawn(async move { consumer.start_idempotent(&url).await });
        let rows = pgkafka_tests::wait_for("3 mirrored rows", Duration::from_secs(60), || {
            let pool = pool.clone();
            let table = table.clone();
            async move {
                let rows: Vec<(String,)> =
                    sqlx::query_as(&format!("SELECT sku FROM {table} ORDER BY sku")).fetch_all(&pool).await.ok()?;
                (rows.len() >= 3).then_some(rows)
            }
        })
        .await;
        stop.shutdown();
        running.await.unwrap().unwrap();
        let skus: Vec<&str> = rows.iter().map(|(s,)| s.as_str()).collect();
        // A second insert of B would have violated the primary key and stopped the consumer.
        assert_eq!(skus, ["A", "B", "C"]);
        sqlx::query(&format!("DROP TABLE {table}; DROP TABLE IF EXISTS \"{state_table}\""))
            .execute(&pool)
            .await
            .ok();
    }
}

// ---------------------------------------------------------------------------------------------
// End to end: PostgreSQL, the real producer, the broker, typed handlers.
// ---------------------------------------------------------------------------------------------

mod end_to_end {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use pgkafka::typed::{Router, TableHandler};
    use pgkafka::{async_trait::async_trait, Consumer, ConsumerError, Producer, ReplicatedTable};
    use std::time::Instant;

    use pgkafka_tests::{create_topic, env, kafka_config, pg_client, unique_name, wait_for, Record};

    /// A derive names its table at compile time, so runs share this table; each run's rows carry
    /// its own `run` value and each run has its own publication, slot and topic.
    #[derive(ReplicatedTable, Debug, Clone, PartialEq)]
    #[replicated(table = "typed_e2e_inventory", partition_key = [organization_id])]
    struct Inventory {
        run: String,
        organization_id: i64,
        sku: String,
        quantity: Option<i32>,
        price: Option<rust_decimal::Decimal>,
        tags: Vec<String>,
    }

    /// What the handler saw of this run's rows.
    #[derive(Clone, Default)]
    struct Seen {
        run: String,
        events: Arc<Mutex<Vec<String>>>,
    }

    #[async_trait]
    impl TableHandler<Inventory> for Seen {
        async fn insert(&self, row: Inventory) -> Result<(), ConsumerError> {
            if row.run == self.run {
                self.events.lock().unwrap().push(format!(
                    "insert {} {} {:?} {:?} {:?}",
                    row.organization_id,
                    row.sku,
                    row.quantity,
                    row.price.map(|p| p.to_string()),
                    row.tags
                ));
            }
            Ok(())
        }
        async fn update(&self, old: Inventory, new: Inventory) -> Result<(), ConsumerError> {
            if new.run == self.run {
                self.events.lock().unwrap().push(format!("update {} {:?} -> {:?}", new.sku, old.quantity, new.quantity));
            }
            Ok(())
        }
        async fn delete(&self, row: Inventory) -> Result<(), ConsumerError> {
            if row.run == self.run {
                self.events.lock().unwrap().push(format!("delete {}", row.sku));
            }
            Ok(())
        }
    }

    /// Reads `topic` from the beginning until `count` records of `run` arrived. Polls rather than
    /// reading to the high watermark: the bundled broker has reported a watermark one short for
    /// partitions written by batches, which would end the read early.
    async fn records_of_run(topic: &str, run: &str, count: usize, timeout: Duration) -> Vec<Record> {
        use rdkafka::consumer::{BaseConsumer, Consumer as _};
        use rdkafka::message::Message as _;
        let (topic, run) = (topic.to_owned(), run.to_owned());
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = kafka_config()
                .set("group.id", unique_name("typed_reader"))
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .create()
                .unwrap();
            consumer.subscribe(&[&topic]).unwrap();
            let deadline = Instant::now() + timeout;
            let mut records = Vec::new();
            while records.len() < count {
                assert!(Instant::now() < deadline, "only {} of {count} records of {run} in {topic} after {timeout:?}", records.len());
                if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                    let message = message.unwrap();
                    let record = Record {
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key().map(<[u8]>::to_vec),
                        value: message.payload().map(<[u8]>::to_vec),
                    };
                    let op = record.op();
                    if op.value(op.op.key_row(), "run") == Some(Some(run.as_str())) {
                        records.push(record);
                    }
                }
            }
            records
        })
        .await
        .unwrap()
    }

    async fn create_shared_table(pg: &tokio_postgres::Client) {
        // Concurrent runs may race to create it; one wins, the others see it exist.
        for _ in 0..5 {
            let created = pg
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS typed_e2e_inventory (
                        run text, organization_id bigint NOT NULL, sku text, quantity int, price numeric,
                        tags text[] NOT NULL DEFAULT '{}', PRIMARY KEY (run, sku));
                     ALTER TABLE typed_e2e_inventory REPLICA IDENTITY FULL;
                     ALTER TABLE typed_e2e_inventory ALTER COLUMN organization_id SET NOT NULL;",
                )
                .await;
            if created.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("cannot create typed_e2e_inventory");
    }

    #[tokio::test]
    async fn the_real_producer_feeds_a_typed_consumer() {
        pgkafka_tests::init_tracing();
        let pg = pg_client().await;
        create_shared_table(&pg).await;
        let run = unique_name("run");
        let publication = unique_name("typed_e2e_pub");
        let slot = unique_name("typed_e2e_slot");
        let topic = unique_name("typed_e2e_topic");
        pg.batch_execute(&format!("CREATE PUBLICATION {publication} FOR TABLE typed_e2e_inventory")).await.unwrap();
        create_topic(&topic, 3).await;

        // The topic map comes from the derived type; only the topic is made unique for the run.
        let mut topic_map = pgkafka::topic_map![Inventory];
        topic_map.get_mut(Inventory::TABLE_NAME).unwrap().name = topic.clone();
        assert_eq!(topic_map[Inventory::TABLE_NAME].partition_key, ["organization_id"]);
        let producer = Producer::new(
            env().database_url.clone(),
            env().brokers.clone(),
            slot.clone(),
            publication.clone(),
            topic_map,
        );
        let shutdown = producer.shutdown_handle();
        let running = tokio::spawn(async move { producer.start().await });
        // The slot exists once the producer is streaming; changes before it would not be sent.
        let started = wait_for("the producer's slot", Duration::from_secs(30), || {
            let pg = &pg;
            let slot = slot.clone();
            let stopped = running.is_finished();
            async move {
                if stopped {
                    return Some(false);
                }
                let rows = pg.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active", &[&slot]).await.ok()?;
                (!rows.is_empty()).then_some(true)
            }
        })
        .await;
        if !started {
            panic!("the producer stopped: {:?}", running.await);
        }

        pg.batch_execute(&format!(
            "BEGIN;
             INSERT INTO typed_e2e_inventory VALUES ('{run}', 1, 'A', 5, 9.99, '{{red,\"big one\"}}');
             INSERT INTO typed_e2e_inventory VALUES ('{run}', 2, 'B', NULL, NULL, '{{}}');
             COMMIT;
             UPDATE typed_e2e_inventory SET quantity = 4 WHERE run = '{run}' AND sku = 'A';
             DELETE FROM typed_e2e_inventory WHERE run = '{run}' AND sku = 'B';"
        ))
        .await
        .unwrap();

        let records = records_of_run(&topic, &run, 4, Duration::from_secs(60)).await;
        // Keys are the partition-key values of the derived type.
        for record in &records {
            let op = record.op();
            let org = op.value(op.op.key_row(), "organization_id").unwrap().unwrap().to_owned();
            assert_eq!(record.key_text().unwrap(), format!("[\"{org}\"]"));
        }

        // The typed router under the real basic consumer.
        let seen = Seen { run: run.clone(), ..Seen::default() };
        let router = Router::new().route::<Inventory>(seen.clone());
        let consumer = Consumer::new(unique_name("typed_e2e_group"), [topic.as_str()], env().brokers.as_str(), router)
            .kafka_option("session.timeout.ms", "6000")
            .kafka_option("heartbeat.interval.ms", "500");
        let stop_consumer = consumer.shutdown_handle();
        let consuming = tokio::spawn(consumer.start_basic());
        let events = seen.events.clone();
        wait_for("the typed handler to see the run's 4 changes", Duration::from_secs(60), || {
            let n = events.lock().unwrap().len();
            async move { (n >= 4).then_some(()) }
        })
        .await;
        stop_consumer.shutdown();
        consuming.await.unwrap().unwrap();
        shutdown.shutdown();
        running.await.unwrap().unwrap();

        // Each organization's changes are in one partition, so in commit order; the two
        // organizations' partitions are consumed concurrently.
        let events = seen.events.lock().unwrap().clone();
        let of = |sku: &str| -> Vec<&str> {
            events.iter().map(String::as_str).filter(|e| e.split(' ').any(|w| w == sku)).collect()
        };
        assert_eq!(
            of("A"),
            ["insert 1 A Some(5) Some(\"9.99\") [\"red\", \"big one\"]", "update A Some(5) -> Some(4)"]
        );
        assert_eq!(of("B"), ["insert 2 B None None []", "delete B"]);
        assert_eq!(events.len(), 4, "{events:?}");

        wait_for("the slot to be released", Duration::from_secs(30), || {
            let pg = &pg;
            let slot = slot.clone();
            async move { pg.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.ok().map(|_| ()) }
        })
        .await;
        pg.batch_execute(&format!("DROP PUBLICATION {publication}")).await.unwrap();
    }
}

mod check_table;
mod route_validation;
