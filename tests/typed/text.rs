//! Values as PostgreSQL prints them (the text `pgoutput` sends) parse back to what was
//! inserted, for every supported type, and the values a type cannot hold are rejected by name.

use std::fmt::Debug;

use pgkafka::text::{FromPgText, Json};
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

/// Booleans and every integer type at their limits parse back from PostgreSQL's text.
#[tokio::test]
async fn booleans_and_integers_round_trip() {
    round_trip("boolean", &[("true", true), ("false", false)]).await;
    round_trip("smallint", &[("-32768", i16::MIN), ("32767", i16::MAX), ("0", 0)]).await;
    round_trip("integer", &[("-2147483648", i32::MIN), ("2147483647", i32::MAX), ("-1", -1)]).await;
    round_trip("bigint", &[("-9223372036854775808", i64::MIN), ("9223372036854775807", i64::MAX)]).await;
    round_trip("oid", &[("4294967295", u32::MAX)]).await;
}

/// Floats with NaN, infinities, -0, subnormals and shortest round-trip digits parse back bit for
/// bit, also with `extra_float_digits = 0`.
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

/// Text, varchar, char(n) (with its padding), "char" and name with quotes, backslashes, newlines
/// and unicode parse back unchanged.
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

/// bytea with every byte value parses back in both the hex and the escape output format.
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

/// Arrays with quotes, NULLs, the text NULL, empty strings and explicit bounds parse back;
/// multi-dimensional arrays and NULLs into non-Option elements are rejected.
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

/// json and jsonb parse back as `serde_json::Value` and into a struct through `Json<T>`.
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

/// UUIDs written in upper case parse back.
#[tokio::test]
async fn uuids_round_trip() {
    let id = uuid::Uuid::parse_str("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
    round_trip(
        "uuid",
        &[("'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'", id), ("'00000000-0000-0000-0000-000000000000'", uuid::Uuid::nil())],
    )
    .await;
}

/// Numerics at `Decimal`'s limits parse back with their scale; NaN and values beyond `Decimal` are
/// rejected by name.
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

/// chrono dates, times and timestamps, and timestamptz in zones with hour, minute and second
/// offsets, parse back; BC, infinity and out-of-range values are rejected by name.
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

/// The `time` crate's dates, times and timestamps, and timestamptz in several zones, parse back; BC
/// and out-of-range dates are rejected.
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
