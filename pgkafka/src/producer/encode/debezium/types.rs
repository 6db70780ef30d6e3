//! How each PostgreSQL column type is written in a Debezium event: its Kafka Connect schema and
//! its value, converted from the text pgoutput sends. Pure: text in, JSON out.
//!
//! The mappings are Debezium PostgreSQL connector's defaults (`time.precision.mode=adaptive`,
//! `binary.handling.mode=bytes`, `interval.handling.mode=numeric`) with `decimal.handling.mode`
//! chosen by [`DecimalHandling`]. A type without a mapping here is written as its text, a
//! string, as Debezium does for `inet`, ranges, `citext` and the like.

use super::json::{push_base64, push_str};
use crate::producer::format::DecimalHandling;

/// Microseconds per day.
const DAY_MICROS: i64 = 86_400_000_000;
/// What Debezium writes for `timestamp 'infinity'` and `'-infinity'` (as PostgreSQL's JDBC driver does).
const TIMESTAMP_INFINITY: i64 = 9_223_372_036_825_200_000;
const TIMESTAMP_MINUS_INFINITY: i64 = -9_223_372_036_832_400_000;
/// Debezium's days per month for intervals (`MicroDuration.DAYS_PER_MONTH_AVG`).
const DAYS_PER_MONTH: f64 = 365.25 / 12.0;

/// What a column's values are, from its type OID and type modifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Boolean,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    /// `numeric(precision, scale)`, or unconstrained `numeric` (`None`).
    Numeric(Option<(u32, u32)>),
    Date,
    /// `time(p)`: p ≤ 3 is milliseconds, more is microseconds.
    Time { precision: u8 },
    TimeTz,
    Timestamp { precision: u8 },
    /// `timestamptz(p)`; `None` without a precision (as many fraction digits as needed).
    TimestampTz { precision: Option<u8> },
    Interval,
    Json,
    Uuid,
    Xml,
    Bytea,
    /// Text types, and every type without its own mapping.
    Text,
    /// A one-dimensional array of the element kind.
    Array(Box<Kind>),
}

impl Kind {
    /// The kind of a column of type `type_oid` with modifier `typmod` (`-1`: none).
    pub(crate) fn of(type_oid: u32, typmod: i32) -> Self {
        let precision = |default: u8| u8::try_from(typmod).ok().filter(|p| *p <= 6).unwrap_or(default);
        match type_oid {
            16 => Self::Boolean,
            21 => Self::Int16,
            23 => Self::Int32,
            20 | 26 => Self::Int64,
            700 => Self::Float32,
            701 => Self::Float64,
            1700 => Self::Numeric(numeric_typmod(typmod)),
            1082 => Self::Date,
            1083 => Self::Time { precision: precision(6) },
            1266 => Self::TimeTz,
            1114 => Self::Timestamp { precision: precision(6) },
            1184 => Self::TimestampTz { precision: u8::try_from(typmod).ok().filter(|p| (1..=6).contains(p)) },
            1186 => Self::Interval,
            114 | 3802 => Self::Json,
            2950 => Self::Uuid,
            142 => Self::Xml,
            17 => Self::Bytea,
            other => match array_element(other) {
                // An array's typmod is its element's.
                Some(element) => Self::Array(Box::new(Self::of(element, typmod))),
                None => Self::Text,
            },
        }
    }

    /// The Kafka Connect schema of a field of this kind, without `field` and its closing brace:
    /// `{"type":...,"optional":...[,"name":...,"version":1][,"parameters":{...}]`, in the order
    /// Kafka's `JsonConverter` writes them.
    pub(crate) fn push_schema(&self, decimal: DecimalHandling, optional: bool, out: &mut String) {
        let (literal, name, parameters): (&str, Option<&str>, Option<String>) = match self {
            Self::Boolean => ("boolean", None, None),
            Self::Int16 => ("int16", None, None),
            Self::Int32 => ("int32", None, None),
            Self::Int64 => ("int64", None, None),
            Self::Float32 => ("float", None, None),
            Self::Float64 => ("double", None, None),
            Self::Numeric(typmod) => match (decimal, typmod) {
                (DecimalHandling::Precise, Some((precision, scale))) => (
                    "bytes",
                    Some("org.apache.kafka.connect.data.Decimal"),
                    Some(format!(r#"{{"scale":"{scale}","connect.decimal.precision":"{precision}"}}"#)),
                ),
                (DecimalHandling::Precise, None) => {
                    out.push_str(
                        r#"{"type":"struct","fields":[{"type":"int32","optional":false,"field":"scale"},{"type":"bytes","optional":false,"field":"value"}],"optional":"#,
                    );
                    out.push_str(if optional { "true" } else { "false" });
                    out.push_str(r#","name":"io.debezium.data.VariableScaleDecimal","version":1,"doc":"Variable scaled decimal""#);
                    return;
                }
                (DecimalHandling::String, _) => ("string", None, None),
                (DecimalHandling::Double, _) => ("double", None, None),
            },
            Self::Date => ("int32", Some("io.debezium.time.Date"), None),
            Self::Time { precision } if *precision <= 3 => ("int32", Some("io.debezium.time.Time"), None),
            Self::Time { .. } => ("int64", Some("io.debezium.time.MicroTime"), None),
            Self::TimeTz => ("string", Some("io.debezium.time.ZonedTime"), None),
            Self::Timestamp { precision } if *precision <= 3 => ("int64", Some("io.debezium.time.Timestamp"), None),
            Self::Timestamp { .. } => ("int64", Some("io.debezium.time.MicroTimestamp"), None),
            Self::TimestampTz { .. } => ("string", Some("io.debezium.time.ZonedTimestamp"), None),
            Self::Interval => ("int64", Some("io.debezium.time.MicroDuration"), None),
            Self::Json => ("string", Some("io.debezium.data.Json"), None),
            Self::Uuid => ("string", Some("io.debezium.data.Uuid"), None),
            Self::Xml => ("string", Some("io.debezium.data.Xml"), None),
            Self::Bytea => ("bytes", None, None),
            Self::Text => ("string", None, None),
            Self::Array(element) => {
                out.push_str(r#"{"type":"array","items":"#);
                element.push_schema(decimal, true, out);
                out.push('}');
                out.push_str(r#","optional":"#);
                out.push_str(if optional { "true" } else { "false" });
                return;
            }
        };
        out.push_str(r#"{"type":""#);
        out.push_str(literal);
        out.push_str(r#"","optional":"#);
        out.push_str(if optional { "true" } else { "false" });
        if let Some(name) = name {
            out.push_str(r#","name":""#);
            out.push_str(name);
            out.push_str(r#"","version":1"#);
        }
        if let Some(parameters) = parameters {
            out.push_str(r#","parameters":"#);
            out.push_str(&parameters);
        }
    }

    /// Writes the JSON value of `text`, the column's text output, or says why it cannot.
    pub(crate) fn push_value(&self, text: &str, decimal: DecimalHandling, out: &mut Vec<u8>) -> Result<(), String> {
        match self {
            Self::Boolean => out.extend_from_slice(match text {
                "t" | "true" => b"true",
                "f" | "false" => b"false",
                _ => return Err(format!("{text:?} is not a boolean")),
            }),
            Self::Int16 => push_integer::<i16>(text, out)?,
            Self::Int32 => push_integer::<i32>(text, out)?,
            Self::Int64 => push_integer::<i64>(text, out)?,
            // Each width printed as its own shortest form (a `real` 0.1 is 0.1, not 0.100000001).
            Self::Float32 => push_float(text, text.parse::<f32>().ok().filter(|v| v.is_finite()).and_then(|v| serde_json::to_string(&v).ok()), out)?,
            Self::Float64 => push_float(text, text.parse::<f64>().ok().filter(|v| v.is_finite()).and_then(|v| serde_json::to_string(&v).ok()), out)?,
            Self::Numeric(typmod) => push_numeric(text, *typmod, decimal, out)?,
            Self::Date => out.extend_from_slice(days_since_epoch(text)?.to_string().as_bytes()),
            Self::Time { precision } => {
                let micros = time_micros(text)?;
                let value = if *precision <= 3 { micros / 1000 } else { micros };
                out.extend_from_slice(value.to_string().as_bytes());
            }
            Self::TimeTz => push_str(out, &zoned_time(text)?),
            Self::Timestamp { precision } => {
                let micros = timestamp_micros(text)?;
                let value = match micros {
                    TIMESTAMP_INFINITY | TIMESTAMP_MINUS_INFINITY => micros,
                    _ if *precision <= 3 => micros.div_euclid(1000),
                    _ => micros,
                };
                out.extend_from_slice(value.to_string().as_bytes());
            }
            Self::TimestampTz { precision } => match text {
                "infinity" | "-infinity" => push_str(out, text),
                _ => push_str(out, &zoned_timestamp(text, *precision)?),
            },
            Self::Interval => out.extend_from_slice(interval_micros(text)?.to_string().as_bytes()),
            Self::Json | Self::Uuid | Self::Xml | Self::Text => push_str(out, text),
            Self::Bytea => push_base64(out, &bytea(text)?),
            Self::Array(element) => {
                out.push(b'[');
                for (index, item) in parse_array(text)?.into_iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    match item {
                        None => out.extend_from_slice(b"null"),
                        Some(item) => element.push_value(&item, decimal, out)?,
                    }
                }
                out.push(b']');
            }
        }
        Ok(())
    }
}

/// The element type of the built-in array types pgkafka maps element by element.
fn array_element(array_oid: u32) -> Option<u32> {
    Some(match array_oid {
        1000 => 16,
        1005 => 21,
        1007 => 23,
        1016 => 20,
        1028 => 26,
        1021 => 700,
        1022 => 701,
        1231 => 1700,
        1182 => 1082,
        1183 => 1083,
        1115 => 1114,
        1185 => 1184,
        1187 => 1186,
        199 => 114,
        3807 => 3802,
        2951 => 2950,
        1001 => 17,
        // text, varchar, bpchar, char, name
        1009 | 1015 | 1014 | 1002 | 1003 => 25,
        _ => return None,
    })
}

/// `numeric`'s precision and scale from its type modifier.
fn numeric_typmod(typmod: i32) -> Option<(u32, u32)> {
    let bits = u32::try_from(typmod.checked_sub(4)?).ok()?;
    Some(((bits >> 16) & 0xffff, bits & 0xffff))
}

/// An integer, checked to be one of the column's size, written as PostgreSQL printed it
/// (its canonical decimal form, which is the JSON number's).
fn push_integer<T: std::str::FromStr>(text: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let not_integer = || format!("{text:?} is not an integer of the column's size");
    text.parse::<T>().map_err(|_| not_integer())?;
    // Only the forms JSON allows: no sign but `-`, no leading zero.
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.starts_with('+') || (digits.len() > 1 && digits.starts_with('0')) {
        return Err(not_integer());
    }
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// A finite float (`shortest`: its shortest form at its own width, as `serde_json` writes
/// it) as a JSON number; `NaN`, `Infinity` and `-Infinity`, which JSON has no number
/// for, as those strings.
fn push_float(text: &str, shortest: Option<String>, out: &mut Vec<u8>) -> Result<(), String> {
    if matches!(text, "NaN" | "Infinity" | "-Infinity") {
        push_str(out, text);
        return Ok(());
    }
    let shortest = shortest.ok_or_else(|| format!("{text:?} is not a finite number"))?;
    out.extend_from_slice(shortest.as_bytes());
    Ok(())
}

fn push_numeric(text: &str, typmod: Option<(u32, u32)>, decimal: DecimalHandling, out: &mut Vec<u8>) -> Result<(), String> {
    match decimal {
        DecimalHandling::String => push_str(out, text),
        DecimalHandling::Double => push_float(text, text.parse::<f64>().ok().filter(|v| v.is_finite()).and_then(|v| serde_json::to_string(&v).ok()), out)?,
        DecimalHandling::Precise => {
            let (negative, digits, scale) = parse_decimal(text)?;
            match typmod {
                Some((_, column_scale)) => {
                    let unscaled = rescale(digits, scale, column_scale)?;
                    push_base64(out, &twos_complement(negative, &unscaled));
                }
                None => {
                    out.extend_from_slice(br#"{"scale":"#);
                    out.extend_from_slice(scale.to_string().as_bytes());
                    out.extend_from_slice(br#","value":"#);
                    push_base64(out, &twos_complement(negative, &digits));
                    out.push(b'}');
                }
            }
        }
    }
    Ok(())
}

/// A decimal's sign, all its digits (the unscaled value) and its scale.
fn parse_decimal(text: &str) -> Result<(bool, Vec<u8>, u32), String> {
    let unrepresentable = || {
        format!(
            "numeric {text:?} has no Kafka Connect Decimal form; set decimal_handling to \"string\" or \"double\" to publish it"
        )
    };
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = body.split_once('.').unwrap_or((body, ""));
    if whole.is_empty() || !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(unrepresentable());
    }
    let digits: Vec<u8> = whole.bytes().chain(fraction.bytes()).map(|b| b - b'0').collect();
    let scale = u32::try_from(fraction.len()).map_err(|_| unrepresentable())?;
    Ok((negative, digits, scale))
}

/// The unscaled digits of a value of scale `scale` at the column's scale.
fn rescale(mut digits: Vec<u8>, scale: u32, column_scale: u32) -> Result<Vec<u8>, String> {
    if scale > column_scale {
        // PostgreSQL rounds to the column's scale before storing; more digits would be a bug.
        return Err(format!("a value with {scale} fraction digits in a column of scale {column_scale}"));
    }
    digits.extend(std::iter::repeat_n(0, (column_scale - scale) as usize));
    Ok(digits)
}

/// Decimal digits (most significant first) as a big-endian two's-complement integer, in as
/// few bytes as hold its sign: Java's `BigInteger.toByteArray`, which Kafka Connect's
/// `Decimal` writes.
pub(crate) fn twos_complement(negative: bool, digits: &[u8]) -> Vec<u8> {
    // Magnitude in base 256, least significant first, by long division of the decimal digits.
    let mut magnitude: Vec<u8> = Vec::new();
    let mut number: Vec<u8> = digits.iter().copied().skip_while(|d| *d == 0).collect();
    while !number.is_empty() {
        let mut quotient = Vec::with_capacity(number.len());
        let mut remainder: u32 = 0;
        for digit in &number {
            let current = remainder * 10 + u32::from(*digit);
            let q = (current / 256) as u8;
            remainder = current % 256;
            if !(quotient.is_empty() && q == 0) {
                quotient.push(q);
            }
        }
        magnitude.push(remainder as u8);
        number = quotient;
    }
    magnitude.reverse();
    if magnitude.is_empty() {
        return vec![0];
    }
    if !negative {
        if magnitude.first().is_some_and(|b| b & 0x80 != 0) {
            magnitude.insert(0, 0);
        }
        return magnitude;
    }
    // Negate: invert and add one, with a byte to spare for the sign.
    magnitude.insert(0, 0);
    let mut carry = true;
    for byte in magnitude.iter_mut().rev() {
        let (sum, overflow) = (!*byte).overflowing_add(u8::from(carry));
        *byte = sum;
        carry = overflow;
    }
    // Drop leading 0xff bytes the next byte's sign bit makes redundant.
    while magnitude.len() > 1 && magnitude.first() == Some(&0xff) && magnitude.get(1).is_some_and(|b| b & 0x80 != 0) {
        magnitude.remove(0);
    }
    magnitude
}

/// Days from 1970-01-01 to a civil date (proleptic Gregorian; year 0 is 1 BC).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The civil date of a day count from 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DD` with an optional ` BC` as days since 1970-01-01.
fn days_since_epoch(text: &str) -> Result<i64, String> {
    let bad = || format!("{text:?} is not a date with a day count (ISO DateStyle expected; infinity has none)");
    let (date, bc) = match text.strip_suffix(" BC") {
        Some(date) => (date, true),
        None => (text, false),
    };
    let mut parts = date.splitn(3, '-');
    let (Some(year), Some(month), Some(day)) = (parts.next(), parts.next(), parts.next()) else { return Err(bad()) };
    let year: i64 = year.parse().map_err(|_| bad())?;
    let month: u32 = month.parse().map_err(|_| bad())?;
    let day: u32 = day.parse().map_err(|_| bad())?;
    // PostgreSQL's dates end in year 5874897; beyond, the arithmetic below could overflow.
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || year.abs() > 10_000_000 {
        return Err(bad());
    }
    Ok(days_from_civil(if bc { 1 - year } else { year }, month, day))
}

/// `HH:MM:SS[.ffffff]` as microseconds past midnight (`24:00:00` included).
fn time_micros(text: &str) -> Result<i64, String> {
    let bad = || format!("{text:?} is not a time of day");
    let mut parts = text.splitn(3, ':');
    let (Some(hours), Some(minutes), Some(seconds)) = (parts.next(), parts.next(), parts.next()) else { return Err(bad()) };
    let (seconds, fraction) = seconds.split_once('.').unwrap_or((seconds, ""));
    let number = |s: &str| s.parse::<i64>().ok().filter(|_| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    let (Some(h), Some(m), Some(s)) = (number(hours), number(minutes), number(seconds)) else { return Err(bad()) };
    if h > 24 || m > 59 || s > 60 {
        return Err(bad());
    }
    if fraction.len() > 6 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let micros = format!("{fraction:0<6}").parse::<i64>().map_err(|_| bad())?;
    Ok(((h * 60 + m) * 60 + s) * 1_000_000 + micros)
}

/// A UTC offset `+HH[:MM[:SS]]` at the end of `text`: the text before it and the offset in seconds.
fn split_offset(text: &str) -> Option<(&str, i64)> {
    let at = text.rfind(['+', '-'])?;
    let (rest, offset) = text.split_at(at);
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let mut seconds = 0;
    for (index, part) in offset.get(1..)?.split(':').enumerate() {
        let unit = match index {
            0 => 3600,
            1 => 60,
            2 => 1,
            _ => return None,
        };
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        seconds += part.parse::<i64>().ok()? * unit;
    }
    Some((rest, sign * seconds))
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][ BC]` as microseconds since the epoch, or Debezium's
/// stand-ins for `infinity` and `-infinity`.
fn timestamp_micros(text: &str) -> Result<i64, String> {
    match text {
        "infinity" => return Ok(TIMESTAMP_INFINITY),
        "-infinity" => return Ok(TIMESTAMP_MINUS_INFINITY),
        _ => {}
    }
    let (body, bc) = match text.strip_suffix(" BC") {
        Some(body) => (body, " BC"),
        None => (text, ""),
    };
    let bad = || format!("{text:?} is not a timestamp (ISO DateStyle expected)");
    let (date, time) = body.split_once(' ').ok_or_else(bad)?;
    let days = days_since_epoch(&format!("{date}{bc}")).map_err(|_| bad())?;
    let micros = time_micros(time).map_err(|_| bad())?;
    days.checked_mul(DAY_MICROS).and_then(|d| d.checked_add(micros)).ok_or_else(bad)
}

/// Fraction digits of `micros` (0..1_000_000): exactly `width` digits, or without trailing
/// zeros (none at all for a whole second) when `width` is `None`, as Java's ISO formatters print.
fn push_fraction(micros: i64, width: Option<u8>, out: &mut String) {
    let digits = format!("{micros:06}");
    let shown = match width {
        Some(width) => digits.get(..usize::from(width)).unwrap_or(&digits),
        None => digits.trim_end_matches('0'),
    };
    if !shown.is_empty() {
        out.push('.');
        out.push_str(shown);
    }
}

/// A `timestamptz` as Debezium's `ZonedTimestamp`: ISO 8601 in UTC, `2018-06-20T13:13:16.945104Z`.
fn zoned_timestamp(text: &str, precision: Option<u8>) -> Result<String, String> {
    let bad = || format!("{text:?} is not a timestamp with time zone (ISO DateStyle expected)");
    let (body, bc) = match text.strip_suffix(" BC") {
        Some(body) => (body, " BC"),
        None => (text, ""),
    };
    let (local, offset) = split_offset(body).ok_or_else(bad)?;
    let local = timestamp_micros(&format!("{local}{bc}")).map_err(|_| bad())?;
    let utc = local.saturating_sub(offset * 1_000_000);
    let (days, micros) = (utc.div_euclid(DAY_MICROS), utc.rem_euclid(DAY_MICROS));
    let (year, month, day) = civil_from_days(days);
    let seconds = micros / 1_000_000;
    let mut out = if (0..=9999).contains(&year) {
        format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60)
    } else {
        // Java prints years beyond four digits with a sign.
        format!("{year:+05}-{month:02}-{day:02}T{:02}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60)
    };
    push_fraction(micros % 1_000_000, precision, &mut out);
    out.push('Z');
    Ok(out)
}

/// A `timetz` as Debezium's `ZonedTime`: ISO 8601 in UTC, `13:13:16.945104Z`.
fn zoned_time(text: &str) -> Result<String, String> {
    let bad = || format!("{text:?} is not a time with time zone");
    let (local, offset) = split_offset(text).ok_or_else(bad)?;
    let utc = (time_micros(local)? - offset * 1_000_000).rem_euclid(DAY_MICROS);
    let seconds = utc / 1_000_000;
    let mut out = format!("{:02}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60);
    push_fraction(utc % 1_000_000, None, &mut out);
    out.push('Z');
    Ok(out)
}

/// An `interval` in PostgreSQL's default output style (`1 year 2 mons 3 days 04:05:06.5`) as
/// Debezium's `MicroDuration`: months count 365.25 / 12 days.
fn interval_micros(text: &str) -> Result<i64, String> {
    let bad = || format!("{text:?} is not an interval in IntervalStyle postgres");
    let (mut months, mut days, mut micros) = (0f64, 0f64, 0i64);
    let mut words = text.split_whitespace();
    while let Some(word) = words.next() {
        if word.contains(':') {
            let (sign, time) = match word.strip_prefix('-') {
                Some(time) => (-1, time),
                None => (1, word.strip_prefix('+').unwrap_or(word)),
            };
            // Hours may exceed 24 in an interval.
            let (hours, rest) = time.split_once(':').ok_or_else(bad)?;
            let hours: i64 = hours.parse().map_err(|_| bad())?;
            let time = hours
                .checked_mul(3_600_000_000)
                .and_then(|h| h.checked_add(time_micros(&format!("00:{rest}")).ok()?))
                .ok_or_else(bad)?;
            micros = micros.checked_add(sign * time).ok_or_else(bad)?;
            continue;
        }
        let count: f64 = word.parse::<i64>().map_err(|_| bad())? as f64;
        match words.next() {
            Some("year" | "years") => months += count * 12.0,
            Some("mon" | "mons") => months += count,
            Some("day" | "days") => days += count,
            _ => return Err(bad()),
        }
    }
    let day_micros = (months * DAYS_PER_MONTH + days) * 86_400.0 * 1e6;
    // A float beyond i64 saturates; the sum, in range for every interval PostgreSQL holds, too.
    Ok((day_micros as i64).saturating_add(micros))
}

/// `bytea` in hex output (`\x0102`), the default `bytea_output`.
fn bytea(text: &str) -> Result<Vec<u8>, String> {
    let hex = text.strip_prefix("\\x").ok_or_else(|| {
        "a bytea value not in hex output; set bytea_output = 'hex' (the default) for the producer's role".to_owned()
    })?;
    let digit = |b: u8| (b as char).to_digit(16);
    hex.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [high, low] => Some(((digit(*high)? << 4) | digit(*low)?) as u8),
            _ => None,
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| "a bytea value with malformed hex".to_owned())
}

/// The elements of a one-dimensional array literal (`{1,NULL,"a b"}`); `None` is `NULL`.
pub(crate) fn parse_array(text: &str) -> Result<Vec<Option<String>>, String> {
    let bad = |why: &str| format!("array {:?}: {why}", text.chars().take(64).collect::<String>());
    // A lower bound other than 1 is printed first: `[0:1]={a,b}`.
    let body = match text.split_once("]={") {
        Some((_, rest)) if text.starts_with('[') => rest,
        _ => text.strip_prefix('{').ok_or_else(|| bad("not an array literal"))?,
    };
    let body = body.strip_suffix('}').ok_or_else(|| bad("not an array literal"))?;
    let mut items = Vec::new();
    if body.is_empty() {
        return Ok(items);
    }
    let mut chars = body.chars().peekable();
    loop {
        match chars.peek() {
            Some('{') => return Err(bad("multi-dimensional arrays are not supported")),
            Some('"') => {
                chars.next();
                let mut item = String::new();
                loop {
                    match chars.next() {
                        Some('\\') => item.push(chars.next().ok_or_else(|| bad("unterminated escape"))?),
                        Some('"') => break,
                        Some(c) => item.push(c),
                        None => return Err(bad("unterminated quoted element")),
                    }
                }
                items.push(Some(item));
            }
            _ => {
                let mut item = String::new();
                while let Some(c) = chars.peek().copied().filter(|c| *c != ',') {
                    item.push(c);
                    chars.next();
                }
                items.push(if item == "NULL" { None } else { Some(item) });
            }
        }
        match chars.next() {
            Some(',') => continue,
            None => return Ok(items),
            Some(_) => return Err(bad("unexpected character after an element")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn value(kind: &Kind, text: &str, decimal: DecimalHandling) -> Result<String, String> {
        let mut out = Vec::new();
        kind.push_value(text, decimal, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    fn precise(type_oid: u32, typmod: i32, text: &str) -> String {
        value(&Kind::of(type_oid, typmod), text, DecimalHandling::Precise).unwrap()
    }

    #[test]
    fn numbers_and_booleans_are_json_numbers_and_booleans() {
        assert_eq!(precise(16, -1, "t"), "true");
        assert_eq!(precise(21, -1, "-32768"), "-32768");
        assert_eq!(precise(23, -1, "42"), "42");
        assert_eq!(precise(20, -1, "9223372036854775807"), "9223372036854775807");
        assert_eq!(precise(700, -1, "1.5"), "1.5");
        assert_eq!(precise(700, -1, "0.1"), "0.1");
        assert_eq!(precise(701, -1, "1e-07"), "1e-7");
        assert_eq!(precise(701, -1, "-2.25e+300"), "-2.25e+300");
        assert_eq!(precise(701, -1, "NaN"), r#""NaN""#);
        assert_eq!(precise(701, -1, "-Infinity"), r#""-Infinity""#);
        assert!(value(&Kind::Int16, "70000", DecimalHandling::Precise).is_err());
        assert!(value(&Kind::Int32, "+5", DecimalHandling::Precise).is_err());
        assert!(value(&Kind::Int32, "007", DecimalHandling::Precise).is_err());
        assert_eq!(precise(23, -1, "0"), "0");
    }

    /// Kafka Connect's Decimal: the unscaled value, big-endian two's complement, base64
    /// (checked against Java's `new BigDecimal("...").unscaledValue().toByteArray()`).
    #[test]
    fn numeric_in_each_decimal_handling() {
        let numeric_10_2 = ((10 << 16) | 2) + 4;
        assert_eq!(precise(1700, numeric_10_2, "1.00"), r#""ZA==""#); // 100 = 0x64
        assert_eq!(precise(1700, numeric_10_2, "-1.00"), r#""nA==""#); // -100 = 0x9c
        assert_eq!(precise(1700, numeric_10_2, "1.28"), r#""AIA=""#); // 128 = 0x00 0x80
        assert_eq!(precise(1700, numeric_10_2, "-1.28"), r#""gA==""#); // -128 = 0x80
        assert_eq!(precise(1700, numeric_10_2, "0.00"), r#""AA==""#);
        assert_eq!(precise(1700, numeric_10_2, "-1.29"), r#""/38=""#); // -129 = 0xff 0x7f
        assert_eq!(precise(1700, -1, "12.345"), r#"{"scale":3,"value":"MDk="}"#); // 12345 = 0x3039
        assert_eq!(twos_complement(false, &[6, 5, 5, 3, 5]), vec![0x00, 0xff, 0xff]);
        assert_eq!(twos_complement(true, &[6, 5, 5, 3, 5]), vec![0xff, 0x00, 0x01]);
        assert_eq!(twos_complement(false, &[6, 5, 5, 3, 6]), vec![0x01, 0x00, 0x00]);
        let error = value(&Kind::Numeric(None), "NaN", DecimalHandling::Precise).unwrap_err();
        assert!(error.contains("decimal_handling"), "{error}");
        assert_eq!(value(&Kind::Numeric(None), "12.345", DecimalHandling::String).unwrap(), r#""12.345""#);
        assert_eq!(value(&Kind::Numeric(None), "12.345", DecimalHandling::Double).unwrap(), "12.345");
        assert_eq!(value(&Kind::Numeric(None), "NaN", DecimalHandling::Double).unwrap(), r#""NaN""#);
    }

    #[test]
    fn temporal_types_are_adaptive() {
        assert_eq!(precise(1082, -1, "1970-01-02"), "1");
        assert_eq!(precise(1082, -1, "1969-12-31"), "-1");
        assert_eq!(precise(1082, -1, "2018-06-20"), "17702");
        assert_eq!(precise(1082, -1, "0001-01-01 BC"), "-719528"); // year 0 of the proleptic calendar
        assert_eq!(precise(1083, -1, "04:05:06.789012"), "14706789012");
        assert_eq!(precise(1083, 3, "04:05:06.789"), "14706789");
        assert_eq!(precise(1083, -1, "24:00:00"), "86400000000");
        // The example of Debezium's "TIMESTAMP type" section.
        assert_eq!(precise(1114, -1, "2018-06-20 15:13:16.945104"), "1529507596945104");
        assert_eq!(precise(1114, 3, "2018-06-20 15:13:16.945"), "1529507596945");
        assert_eq!(precise(1114, 3, "1969-12-31 23:59:59.999"), "-1");
        assert_eq!(precise(1114, -1, "infinity"), "9223372036825200000");
        assert_eq!(precise(1184, -1, "2018-06-20 15:13:16.945104+02"), r#""2018-06-20T13:13:16.945104Z""#);
        assert_eq!(precise(1184, -1, "2018-06-20 15:13:16+05:30"), r#""2018-06-20T09:43:16Z""#);
        assert_eq!(precise(1184, -1, "2018-06-20 15:13:16.5-00:19:32"), r#""2018-06-20T15:32:48.5Z""#);
        assert_eq!(precise(1184, 3, "2018-06-20 15:13:16.5+00"), r#""2018-06-20T15:13:16.500Z""#);
        assert_eq!(precise(1266, -1, "01:02:03.25+02"), r#""23:02:03.25Z""#);
        assert_eq!(precise(1186, -1, "1 year 2 mons 3 days 04:05:06.5"), "37091106500000");
        assert_eq!(precise(1186, -1, "-1 days +02:00:00"), "-79200000000");
        assert_eq!(precise(1186, -1, "00:00:00"), "0");
    }

    #[test]
    fn strings_bytes_and_arrays() {
        assert_eq!(precise(3802, -1, r#"{"a": 1}"#), r#""{\"a\": 1}""#);
        assert_eq!(precise(2950, -1, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), r#""a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11""#);
        assert_eq!(precise(17, -1, "\\x00ff10"), r#""AP8Q""#);
        assert!(value(&Kind::Bytea, "\\000", DecimalHandling::Precise).is_err());
        for (oid, huge) in [(1082, "9223372036854775807-01-01"), (1114, "99999999999-01-01 00:00:00"), (1083, "99999999999999:00:00"),
            (1186, "9223372036854775807:00:00 9223372036854775807:00:00"), (1184, "9999999-01-01 00:00:00+15")] {
            assert!(value(&Kind::of(oid, -1), huge, DecimalHandling::Precise).is_err(), "{oid} {huge}");
        }
        assert_eq!(precise(1007, -1, "{1,NULL,3}"), "[1,null,3]");
        assert_eq!(precise(1009, -1, r#"{a,"b c","d\"e",NULL,"NULL"}"#), r#"["a","b c","d\"e",null,"NULL"]"#);
        assert_eq!(precise(1009, -1, "{}"), "[]");
        assert_eq!(precise(1009, -1, "[0:1]={x,y}"), r#"["x","y"]"#);
        assert!(value(&Kind::of(1007, -1), "{{1,2},{3,4}}", DecimalHandling::Precise).unwrap_err().contains("multi-dimensional"));
        assert_eq!(precise(869, -1, "192.168.0.1/32"), r#""192.168.0.1/32""#, "inet falls back to its text");
    }

    #[test]
    fn schemas_name_the_semantic_types() {
        let schema = |kind: Kind, decimal| {
            let mut out = String::new();
            kind.push_schema(decimal, true, &mut out);
            out.push('}');
            out
        };
        assert_eq!(schema(Kind::Int32, DecimalHandling::Precise), r#"{"type":"int32","optional":true}"#);
        assert_eq!(
            schema(Kind::of(1700, ((10 << 16) | 2) + 4), DecimalHandling::Precise),
            r#"{"type":"bytes","optional":true,"name":"org.apache.kafka.connect.data.Decimal","version":1,"parameters":{"scale":"2","connect.decimal.precision":"10"}}"#
        );
        assert_eq!(
            schema(Kind::Date, DecimalHandling::Precise),
            r#"{"type":"int32","optional":true,"name":"io.debezium.time.Date","version":1}"#
        );
        assert_eq!(
            schema(Kind::of(1007, -1), DecimalHandling::Precise),
            r#"{"type":"array","items":{"type":"int32","optional":true},"optional":true}"#
        );
        for kind in [Kind::Numeric(None), Kind::of(1231, -1)] {
            let text = schema(kind, DecimalHandling::Precise);
            serde_json::from_str::<serde_json::Value>(&text).unwrap();
        }
    }

    proptest::proptest! {
        /// Whatever text arrives for whatever type, conversion never panics, and what it
        /// writes is one valid JSON value.
        #[test]
        fn any_text_converts_to_valid_json_or_an_error(
            oid in proptest::sample::select(vec![16u32, 21, 23, 20, 700, 701, 1700, 1082, 1083, 1266, 1114, 1184, 1186, 114, 2950, 17, 1007, 1009, 1231, 1182, 25]),
            typmod in proptest::sample::select(vec![-1i32, 0, 3, 6, ((10 << 16) | 2) + 4]),
            text in "(-?[0-9]{0,4}[-:. ]?){0,6}(BC|[+-][0-9]{2}|infinity|NaN|\\\\x[0-9a-f]{0,6}|\\{[0-9a-z,\"]{0,8}\\})?|.{0,12}",
            decimal in proptest::sample::select(vec![DecimalHandling::Precise, DecimalHandling::String, DecimalHandling::Double]),
        ) {
            let mut out = Vec::new();
            if Kind::of(oid, typmod).push_value(&text, decimal, &mut out).is_ok() {
                proptest::prop_assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok(), "{}", String::from_utf8_lossy(&out));
            }
        }

        /// Day counts and civil dates convert both ways, across the Gregorian cycles.
        #[test]
        fn days_and_dates_round_trip(days in -3_000_000i64..3_000_000) {
            let (year, month, day) = civil_from_days(days);
            proptest::prop_assert_eq!(days_from_civil(year, month, day), days);
        }

        /// Decimal text of any size encodes without panicking, and small values as i128 would.
        #[test]
        fn twos_complement_matches_i128(value in proptest::num::i64::ANY) {
            let digits: Vec<u8> = value.unsigned_abs().to_string().bytes().map(|b| b - b'0').collect();
            let bytes = twos_complement(value < 0, &digits);
            let mut extended = if bytes.first().is_some_and(|b| b & 0x80 != 0) { vec![0xff; 16] } else { vec![0; 16] };
            let start = 16 - bytes.len();
            extended.splice(start.., bytes.iter().copied());
            let parsed = i128::from_be_bytes(extended.try_into().unwrap());
            proptest::prop_assert_eq!(parsed, i128::from(value));
        }
    }
}
