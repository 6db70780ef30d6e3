//! Turns one Debezium JSON column value back into the PostgreSQL text form pgoutput would have
//! sent, guided by the column's Kafka Connect schema (its type and semantic name).

use serde_json::Value;

/// A column's Kafka Connect schema: what [`to_pg_text`] needs of it.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct FieldSchema {
    /// The column name (`field`).
    pub(crate) name: String,
    /// The Kafka Connect type: `int32`, `string`, `bytes`, `struct`, `array`, ...
    pub(crate) kind: String,
    /// The semantic type (`name`): `io.debezium.time.Date`, `org.apache.kafka.connect.data.Decimal`, ...
    pub(crate) semantic: Option<String>,
    /// `parameters.scale` of a `Decimal`.
    pub(crate) scale: Option<u32>,
    /// The element schema of an `array`.
    pub(crate) items: Option<Box<FieldSchema>>,
}

impl FieldSchema {
    /// Reads one entry of a struct schema's `fields`, or an array's `items`.
    pub(crate) fn from_json(json: &Value) -> Self {
        let text = |key: &str| json.get(key).and_then(Value::as_str).map(str::to_owned);
        let scale = json
            .get("parameters")
            .and_then(|p| p.get("scale"))
            .and_then(|s| s.as_str().map(str::to_owned).or_else(|| s.as_u64().map(|n| n.to_string())))
            .and_then(|s| s.parse().ok());
        Self {
            name: text("field").unwrap_or_default(),
            kind: text("type").unwrap_or_default(),
            semantic: text("name"),
            scale,
            items: json.get("items").map(|items| Box::new(Self::from_json(items))),
        }
    }
}

/// Debezium's default stand-in for a value it did not receive (an unchanged TOASTed column).
pub(crate) const UNAVAILABLE_VALUE: &str = "__debezium_unavailable_value";

/// Whether `value` is Debezium's unavailable-value placeholder, as a string or (for `bytes`
/// columns) base64-encoded.
pub(crate) fn is_unavailable(value: &Value) -> bool {
    match value.as_str() {
        Some(text) => {
            text == UNAVAILABLE_VALUE || base64_decode(text).is_some_and(|b| b == UNAVAILABLE_VALUE.as_bytes())
        }
        None => false,
    }
}

/// The PostgreSQL text form of `value`; `None` for SQL `NULL`.
///
/// With a schema the semantic type decides (days since the epoch become a date, a base64
/// unscaled integer with its scale becomes a decimal, ...). Without one (`schemas.enable=false`)
/// strings pass as they are, numbers print as JSON prints them and booleans become `t`/`f`.
pub(crate) fn to_pg_text(value: &Value, schema: Option<&FieldSchema>) -> Result<Option<String>, String> {
    if value.is_null() {
        return Ok(None);
    }
    let Some(schema) = schema else { return schemaless(value).map(Some) };
    if let Some(semantic) = schema.semantic.as_deref() {
        if let Some(text) = semantic_text(value, semantic, schema)? {
            return Ok(Some(text));
        }
    }
    match schema.kind.as_str() {
        "bytes" => {
            let text = value.as_str().ok_or_else(|| format!("expected base64 text for bytes, found {value}"))?;
            let bytes = base64_decode(text).ok_or_else(|| format!("{text:?} is not base64"))?;
            Ok(Some(bytea_hex(&bytes)))
        }
        "array" => {
            let items = value.as_array().ok_or_else(|| format!("expected an array, found {value}"))?;
            let mut out = String::from("{");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match to_pg_text(item, schema.items.as_deref())? {
                    None => out.push_str("NULL"),
                    Some(text) => push_array_element(&mut out, &text),
                }
            }
            out.push('}');
            Ok(Some(out))
        }
        "struct" | "map" => Err(format!(
            "a {} value{} has no PostgreSQL text form pgkafka can rebuild",
            schema.kind,
            schema.semantic.as_deref().map(|s| format!(" of semantic type {s}")).unwrap_or_default()
        )),
        _ => schemaless(value).map(Some),
    }
}

/// Strings as they are, numbers as JSON prints them, booleans as pgoutput prints them.
fn schemaless(value: &Value) -> Result<String, String> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(if *b { "t" } else { "f" }.to_owned()),
        Value::Array(_) => to_pg_text(value, Some(&FieldSchema { kind: "array".into(), ..FieldSchema::default() }))
            .map(Option::unwrap_or_default),
        Value::Null => Ok(String::new()),
        Value::Object(_) => Err(format!("an object value {value} has no PostgreSQL text form without a schema")),
    }
}

/// The text of a value with a semantic type pgkafka knows; `None` to fall back to the base type.
fn semantic_text(value: &Value, semantic: &str, schema: &FieldSchema) -> Result<Option<String>, String> {
    let int = || value.as_i64().ok_or_else(|| format!("expected an integer for {semantic}, found {value}"));
    let string = || value.as_str().ok_or_else(|| format!("expected a string for {semantic}, found {value}"));
    Ok(Some(match semantic {
        "io.debezium.time.Date" | "org.apache.kafka.connect.data.Date" => date(int()?)?,
        "io.debezium.time.Time" | "org.apache.kafka.connect.data.Time" => time_of_day(i128::from(int()?) * 1_000)?,
        "io.debezium.time.MicroTime" => time_of_day(i128::from(int()?))?,
        "io.debezium.time.NanoTime" => time_of_day(i128::from(int()?) / 1_000)?,
        "io.debezium.time.Timestamp" | "org.apache.kafka.connect.data.Timestamp" => {
            timestamp(i128::from(int()?) * 1_000)?
        }
        "io.debezium.time.MicroTimestamp" => timestamp(i128::from(int()?))?,
        "io.debezium.time.NanoTimestamp" => timestamp(i128::from(int()?) / 1_000)?,
        // ISO-8601 strings: `2018-06-20T15:13:16.945104Z`, `15:13:16Z`, `2017-09-15Z`.
        "io.debezium.time.ZonedTimestamp" | "io.debezium.time.ZonedTime" => iso_zoned(string()?, true),
        // `time.precision.mode=isostring`: zoneless types, written at UTC with a `Z`.
        "io.debezium.time.IsoTimestamp" | "io.debezium.time.IsoTime" | "io.debezium.time.IsoDate" => {
            iso_zoned(string()?, false)
        }
        "io.debezium.time.MicroDuration" => duration(i128::from(int()?)),
        "org.apache.kafka.connect.data.Decimal" => {
            let text = string()?;
            let bytes = base64_decode(text).ok_or_else(|| format!("{text:?} is not base64"))?;
            decimal(&bytes, schema.scale.unwrap_or(0))
        }
        "io.debezium.data.VariableScaleDecimal" => {
            let scale = value
                .get("scale")
                .and_then(Value::as_u64)
                .and_then(|s| u32::try_from(s).ok())
                .ok_or_else(|| format!("a VariableScaleDecimal without a scale: {value}"))?;
            let text = value
                .get("value")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("a VariableScaleDecimal without a value: {value}"))?;
            let bytes = base64_decode(text).ok_or_else(|| format!("{text:?} is not base64"))?;
            decimal(&bytes, scale)
        }
        "io.debezium.data.Bits" => return Err("bit strings (io.debezium.data.Bits) are not supported".into()),
        _ => return Ok(None),
    }))
}

const MICROS_PER_DAY: i128 = 86_400_000_000;

/// `days` since 1970-01-01 as `YYYY-MM-DD`.
fn date(days: i64) -> Result<String, String> {
    let (y, m, d) = civil_from_days(days);
    if y < 1 {
        return Err(format!("the date {days} days from 1970-01-01 is before year 1 (BC dates are not supported)"));
    }
    Ok(format!("{y:04}-{m:02}-{d:02}"))
}

/// Microseconds since midnight as `HH:MM:SS[.ffffff]`.
fn time_of_day(micros: i128) -> Result<String, String> {
    if !(0..=MICROS_PER_DAY).contains(&micros) {
        return Err(format!("{micros} µs is not a time of day"));
    }
    let secs = micros / 1_000_000;
    let mut out = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    push_fraction(&mut out, micros % 1_000_000);
    Ok(out)
}

/// Microseconds since the epoch as `YYYY-MM-DD HH:MM:SS[.ffffff]`.
fn timestamp(micros: i128) -> Result<String, String> {
    let days = micros.div_euclid(MICROS_PER_DAY);
    let days = i64::try_from(days).map_err(|_| format!("{micros} µs is out of range"))?;
    Ok(format!("{} {}", date(days)?, time_of_day(micros.rem_euclid(MICROS_PER_DAY))?))
}

/// An ISO-8601 date, time or timestamp in PostgreSQL's form: `T` becomes a space, a `Z` zone
/// becomes `+00` when `keep_zone` (timestamptz, timetz) and is dropped otherwise (Debezium's
/// `isostring` values of zoneless types, which it writes at UTC).
fn iso_zoned(text: &str, keep_zone: bool) -> String {
    let mut out = text.replacen('T', " ", 1);
    if let Some(stripped) = out.strip_suffix('Z') {
        out = if keep_zone { format!("{stripped}+00") } else { stripped.to_owned() };
    }
    out
}

/// Microseconds as an interval, `HH:MM:SS[.ffffff]` (Debezium's `MicroDuration` already folded
/// months into 30-day units, so only the length survives).
fn duration(micros: i128) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let micros = micros.abs();
    let secs = micros / 1_000_000;
    let mut out = format!("{sign}{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    push_fraction(&mut out, micros % 1_000_000);
    out
}

fn push_fraction(out: &mut String, micros: i128) {
    if micros != 0 {
        let fraction = format!("{micros:06}");
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, u32::try_from(m).unwrap_or(1), u32::try_from(d).unwrap_or(1))
}

/// A big-endian two's-complement unscaled integer with `scale` digits after the point, as text.
fn decimal(bytes: &[u8], scale: u32) -> String {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    // The magnitude, big-endian: the two's complement negated for a negative number.
    let mut magnitude: Vec<u8> = if negative { bytes.iter().map(|b| !b).collect() } else { bytes.to_vec() };
    if negative {
        for byte in magnitude.iter_mut().rev() {
            let (sum, carry) = byte.overflowing_add(1);
            *byte = sum;
            if !carry {
                break;
            }
        }
    }
    // Base 10^9 limbs, little-endian.
    let mut limbs: Vec<u32> = Vec::new();
    for byte in magnitude {
        let mut carry = u64::from(byte);
        for limb in &mut limbs {
            let v = u64::from(*limb) * 256 + carry;
            *limb = (v % 1_000_000_000) as u32;
            carry = v / 1_000_000_000;
        }
        while carry > 0 {
            limbs.push((carry % 1_000_000_000) as u32);
            carry /= 1_000_000_000;
        }
    }
    let mut digits = match limbs.split_last() {
        None => "0".to_owned(),
        Some((top, rest)) => {
            let mut s = top.to_string();
            for limb in rest.iter().rev() {
                s.push_str(&format!("{limb:09}"));
            }
            s
        }
    };
    let scale = scale as usize;
    if scale > 0 {
        if digits.len() <= scale {
            digits = format!("{}{digits}", "0".repeat(scale + 1 - digits.len()));
        }
        digits.insert(digits.len() - scale, '.');
    }
    if negative && digits.bytes().any(|b| (b'1'..=b'9').contains(&b)) {
        digits.insert(0, '-');
    }
    digits
}

/// `bytea`'s hex output form: `\x` and two lower-case hex digits per byte.
fn bytea_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 + bytes.len() * 2);
    out.push_str("\\x");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// One element of a PostgreSQL array literal, quoted when PostgreSQL would quote it.
fn push_array_element(out: &mut String, text: &str) {
    let needs_quotes = text.is_empty()
        || text.eq_ignore_ascii_case("null")
        || text.chars().any(|c| matches!(c, '{' | '}' | ',' | '"' | '\\') || c.is_whitespace());
    if !needs_quotes {
        out.push_str(text);
        return;
    }
    out.push('"');
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Standard base64 (with or without padding); `None` if `text` is not base64.
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn schema(kind: &str, semantic: Option<&str>) -> FieldSchema {
        FieldSchema { kind: kind.into(), semantic: semantic.map(Into::into), ..FieldSchema::default() }
    }

    fn text(value: Value, schema: &FieldSchema) -> String {
        to_pg_text(&value, Some(schema)).unwrap().unwrap()
    }

    #[test]
    fn temporal_semantic_types_become_postgres_text() {
        assert_eq!(text(json!(0), &schema("int32", Some("io.debezium.time.Date"))), "1970-01-01");
        assert_eq!(text(json!(19_000), &schema("int32", Some("io.debezium.time.Date"))), "2022-01-08");
        assert_eq!(text(json!(-719_162), &schema("int32", Some("io.debezium.time.Date"))), "0001-01-01");
        assert_eq!(text(json!(45_296_789), &schema("int32", Some("io.debezium.time.Time"))), "12:34:56.789");
        assert_eq!(
            text(json!(45_296_000_001_i64), &schema("int64", Some("io.debezium.time.MicroTime"))),
            "12:34:56.000001"
        );
        assert_eq!(
            text(json!(1_559_033_904_863_123_i64), &schema("int64", Some("io.debezium.time.MicroTimestamp"))),
            "2019-05-28 08:58:24.863123"
        );
        assert_eq!(text(json!(-1_000), &schema("int64", Some("io.debezium.time.Timestamp"))), "1969-12-31 23:59:59");
        assert_eq!(
            text(json!("2018-06-20T15:13:16.945104Z"), &schema("string", Some("io.debezium.time.ZonedTimestamp"))),
            "2018-06-20 15:13:16.945104+00"
        );
        assert_eq!(text(json!("2017-09-15Z"), &schema("string", Some("io.debezium.time.IsoDate"))), "2017-09-15");
        assert_eq!(
            text(json!("2019-07-09T02:28:57.123456Z"), &schema("string", Some("io.debezium.time.IsoTimestamp"))),
            "2019-07-09 02:28:57.123456"
        );
        assert_eq!(text(json!("04:05:11.789Z"), &schema("string", Some("io.debezium.time.IsoTime"))), "04:05:11.789");
        assert_eq!(text(json!("15:13:16Z"), &schema("string", Some("io.debezium.time.ZonedTime"))), "15:13:16+00");
        assert_eq!(
            text(json!(90_061_000_000_i64), &schema("int64", Some("io.debezium.time.MicroDuration"))),
            "25:01:01"
        );
    }

    #[test]
    fn decimals_keep_every_digit() {
        let dec = |b64: &str, scale| {
            text(
                json!(b64),
                &FieldSchema { scale: Some(scale), ..schema("bytes", Some("org.apache.kafka.connect.data.Decimal")) },
            )
        };
        assert_eq!(dec("AeI=", 2), "4.82"); // 0x01E2 = 482
        assert_eq!(dec("/h4=", 2), "-4.82"); // 0xFE1E = -482
        assert_eq!(dec("AA==", 3), "0.000");
        assert_eq!(dec("Bw==", 3), "0.007");
        let variable = json!({"scale": 1, "value": "AeI="});
        assert_eq!(text(variable, &schema("struct", Some("io.debezium.data.VariableScaleDecimal"))), "48.2");
    }

    #[test]
    fn big_decimals_convert_exactly() {
        // 2^64 = 18446744073709551616: 0x01 followed by eight zero bytes.
        assert_eq!(decimal(&[1, 0, 0, 0, 0, 0, 0, 0, 0], 4), "1844674407370955.1616");
        assert_eq!(decimal(&[0xff, 0, 0, 0, 0, 0, 0, 0, 0], 0), "-18446744073709551616");
    }

    #[test]
    fn bytes_arrays_and_booleans() {
        assert_eq!(text(json!("3q2+7w=="), &schema("bytes", None)), "\\xdeadbeef");
        let array = FieldSchema { items: Some(Box::new(schema("string", None))), ..schema("array", None) };
        assert_eq!(text(json!(["a", "b c", null, "x,\"y\""]), &array), r#"{a,"b c",NULL,"x,\"y\""}"#);
        assert_eq!(text(json!(true), &schema("boolean", None)), "t");
        assert_eq!(to_pg_text(&json!(null), Some(&schema("int32", None))).unwrap(), None);
        assert_eq!(to_pg_text(&json!(1.5), None).unwrap().unwrap(), "1.5");
    }

    #[test]
    fn unsupported_values_are_errors_not_guesses() {
        assert!(to_pg_text(&json!({"x": 1}), Some(&schema("struct", Some("io.debezium.data.geometry.Point")))).is_err());
        assert!(to_pg_text(&json!("not base64!"), Some(&schema("bytes", None))).is_err());
        assert!(to_pg_text(&json!("AQ=="), Some(&schema("bytes", Some("io.debezium.data.Bits")))).is_err());
    }

    #[test]
    fn base64_round_trips_the_placeholder() {
        assert!(is_unavailable(&json!(UNAVAILABLE_VALUE)));
        assert!(is_unavailable(&json!("X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==")));
        assert!(!is_unavailable(&json!("plain")));
    }
}
