//! Parsing PostgreSQL's text output into Rust values.
//!
//! Every value in a [`Row`](crate::Row) is what PostgreSQL's output function printed for the
//! column (the text `pgoutput` sends, and what `psql` shows). [`FromPgText`] turns that text into
//! a Rust value; `#[derive(ReplicatedTable)]` calls it for every field.
//!
//! | PostgreSQL type | Rust type | text |
//! |---|---|---|
//! | `boolean` | `bool` | `t`, `f` (also `true`, `false`) |
//! | `smallint`, `integer`, `bigint` | `i16`, `i32`, `i64` | `-42` |
//! | `real`, `double precision` | `f32`, `f64` | `1.5e-07`, `NaN`, `Infinity`, `-Infinity` |
//! | `text`, `varchar`, `char(n)`, `name`, anything | `String` | as printed |
//! | `"char"`, `char(1)` | `char` | one character |
//! | `bytea` | `Vec<u8>` | `\x0aff` (hex) or the escape format |
//! | one-dimensional arrays | `Vec<T>`, `Vec<Option<T>>` | `{a,"b c",NULL,"q\"uote"}` |
//! | `json`, `jsonb` | [`serde_json::Value`], [`Json<T>`] for any `Deserialize` type | `{"a": 1}` |
//! | `uuid` (feature `uuid`) | `uuid::Uuid` | |
//! | `timestamp`, `timestamptz`, `date`, `time` (feature `chrono`) | `NaiveDateTime`, `DateTime<Utc>`, `DateTime<FixedOffset>`, `NaiveDate`, `NaiveTime` | ISO `DateStyle` |
//! | the same (feature `time`) | `PrimitiveDateTime`, `OffsetDateTime`, `Date`, `Time` | ISO `DateStyle` |
//! | `numeric` (feature `rust_decimal`) | `rust_decimal::Decimal` | `123.4500` |
//!
//! `Option<T>` accepts SQL `NULL` (as `None`); every other type rejects it. Dates and times need
//! the server's default `DateStyle` (`ISO`); BC dates, `infinity` and numeric `NaN` have no Rust
//! counterpart in these types and are rejected with an error saying so.
//!
//! Your own types plug in by implementing [`FromPgText`], or, when they implement
//! [`FromStr`](std::str::FromStr), with one line of [`from_pg_text_via_from_str!`](crate::text::from_pg_text_via_from_str):
//!
//! ```
//! use pgkafka_common::text::FromPgText;
//!
//! #[derive(Debug, PartialEq)]
//! struct Sku(String);
//!
//! impl std::str::FromStr for Sku {
//!     type Err = String;
//!     fn from_str(s: &str) -> Result<Self, String> {
//!         s.strip_prefix("SKU-").map(|rest| Sku(rest.to_owned())).ok_or_else(|| "no SKU- prefix".to_owned())
//!     }
//! }
//! pgkafka_common::text::from_pg_text_via_from_str!(Sku);
//!
//! assert_eq!(Sku::from_pg_text("SKU-7")?, Sku("7".into()));
//! assert_eq!(Vec::<Option<Sku>>::from_pg_text("{SKU-1,NULL}")?, vec![Some(Sku("1".into())), None]);
//! assert!(Sku::from_pg_text("7").is_err());
//! # Ok::<(), pgkafka_common::text::ParseTextError>(())
//! ```

use std::fmt;

/// Why a text value could not be parsed. The caller adds which column and value it was, see
/// [`DecodeError`](crate::DecodeError).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ParseTextError {
    reason: String,
}

impl ParseTextError {
    /// An error with the given reason, e.g. `"expected t or f"`.
    pub fn new(reason: impl fmt::Display) -> Self {
        Self { reason: reason.to_string() }
    }

    /// The reason, without the value.
    #[must_use]
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// A type that can be parsed from PostgreSQL's text output of a column.
///
/// Implement [`from_pg_text`](FromPgText::from_pg_text); implement
/// [`from_pg_null`](FromPgText::from_pg_null) only for types that can represent SQL `NULL`
/// (the provided one rejects it, [`Option<T>`] accepts it).
///
/// Parsing never panics, whatever the text.
///
/// ```
/// use pgkafka_common::text::{FromPgText, ParseTextError};
///
/// /// A `point` column, printed by PostgreSQL as `(1.5,2)`.
/// #[derive(Debug, PartialEq)]
/// struct Point { x: f64, y: f64 }
///
/// impl FromPgText for Point {
///     fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
///         let inner = text.strip_prefix('(').and_then(|t| t.strip_suffix(')'))
///             .ok_or_else(|| ParseTextError::new("expected (x,y)"))?;
///         let (x, y) = inner.split_once(',').ok_or_else(|| ParseTextError::new("expected (x,y)"))?;
///         Ok(Point { x: f64::from_pg_text(x)?, y: f64::from_pg_text(y)? })
///     }
/// }
///
/// assert_eq!(Point::from_pg_text("(1.5,2)")?, Point { x: 1.5, y: 2.0 });
/// assert_eq!(Option::<Point>::from_pg_null(), Some(None));
/// # Ok::<(), ParseTextError>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be decoded from PostgreSQL's text output",
    label = "no `FromPgText` for `{Self}`",
    note = "implement `pgkafka::text::FromPgText` for it, use `pgkafka::text::from_pg_text_via_from_str!` if it implements `FromStr`, or give the field `#[replicated(parse_with = path::to::fn)]`"
)]
pub trait FromPgText: Sized {
    /// Parses one non-NULL value.
    ///
    /// # Errors
    /// When `text` is not a value of this type; the error says what was expected.
    fn from_pg_text(text: &str) -> Result<Self, ParseTextError>;

    /// The value SQL `NULL` (or an absent column) stands for, or `None` when this type cannot
    /// represent it.
    #[must_use]
    fn from_pg_null() -> Option<Self> {
        None
    }
}

impl<T: FromPgText> FromPgText for Option<T> {
    fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
        T::from_pg_text(text).map(Some)
    }

    fn from_pg_null() -> Option<Self> {
        Some(None)
    }
}

/// Parses an optional value: `None` is SQL `NULL`.
///
/// # Errors
/// When the text does not parse, or the value is `NULL` and `T` cannot represent it.
pub fn from_pg_value<T: FromPgText>(value: Option<&str>) -> Result<T, ParseTextError> {
    match value {
        Some(text) => T::from_pg_text(text),
        None => T::from_pg_null().ok_or_else(|| ParseTextError::new("NULL for a type that cannot be NULL")),
    }
}

impl FromPgText for bool {
    fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
        // The output function prints t/f; `::text` casts and JSON-ish producers print true/false.
        match text {
            "t" | "true" => Ok(true),
            "f" | "false" => Ok(false),
            _ => Err(ParseTextError::new("expected a boolean (t or f)")),
        }
    }
}

macro_rules! integers {
    ($($ty:ty => $pg:literal),* $(,)?) => {$(
        impl FromPgText for $ty {
            fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
                text.parse::<$ty>().map_err(|e| ParseTextError::new(format_args!(concat!("expected ", $pg, ": {}"), e)))
            }
        }
    )*};
}

integers! {
    i8 => "an integer in -128..=127",
    i16 => "a smallint",
    i32 => "an integer",
    i64 => "a bigint",
    i128 => "an integer",
    u16 => "a non-negative integer",
    u32 => "a non-negative integer (oid, xid)",
    u64 => "a non-negative integer",
}

macro_rules! floats {
    ($($ty:ty),*) => {$(
        impl FromPgText for $ty {
            fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
                // PostgreSQL spells the special values this way; Rust's parser would also accept
                // "inf" and friends, which PostgreSQL never prints, so match them first.
                match text {
                    "NaN" => Ok(<$ty>::NAN),
                    "Infinity" => Ok(<$ty>::INFINITY),
                    "-Infinity" => Ok(<$ty>::NEG_INFINITY),
                    _ if text.bytes().any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E') => {
                        Err(ParseTextError::new("expected a floating-point number, NaN, Infinity or -Infinity"))
                    }
                    _ => text.parse::<$ty>().map_err(|e| ParseTextError::new(format_args!("expected a floating-point number: {e}"))),
                }
            }
        }
    )*};
}

floats!(f32, f64);

impl FromPgText for String {
    fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
        Ok(text.to_owned())
    }
}

impl FromPgText for char {
    fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
        let mut chars = text.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => Ok(c),
            // char(1) pads with a space; an empty "char" is the zero byte.
            _ => Err(ParseTextError::new("expected exactly one character")),
        }
    }
}

impl FromPgText for Box<str> {
    fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
        Ok(text.into())
    }
}

/// `bytea`, in either output format (`bytea_output = hex`, the default, or `escape`).
impl FromPgText for Vec<u8> {
    fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
        match text.strip_prefix("\\x") {
            Some(hex) => decode_hex(hex),
            None => decode_bytea_escape(text),
        }
    }
}

fn decode_hex(hex: &str) -> Result<Vec<u8>, ParseTextError> {
    fn nibble(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = hex.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return Err(ParseTextError::new("bytea hex has an odd number of digits"));
    }
    bytes
        .chunks_exact(2)
        .map(|pair| match pair {
            [hi, lo] => match (nibble(*hi), nibble(*lo)) {
                (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
                _ => Err(ParseTextError::new("bytea hex contains a non-hexadecimal character")),
            },
            _ => Err(ParseTextError::new("bytea hex has an odd number of digits")),
        })
        .collect()
}

fn decode_bytea_escape(text: &str) -> Result<Vec<u8>, ParseTextError> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'\\') => out.push(b'\\'),
            Some(d0 @ b'0'..=b'3') => {
                let d1 = bytes.next().filter(|d| (b'0'..=b'7').contains(d));
                let d2 = bytes.next().filter(|d| (b'0'..=b'7').contains(d));
                match (d1, d2) {
                    (Some(d1), Some(d2)) => out.push((d0 - b'0') << 6 | (d1 - b'0') << 3 | (d2 - b'0')),
                    _ => return Err(ParseTextError::new("bytea escape format: expected three octal digits after \\")),
                }
            }
            _ => {
                return Err(ParseTextError::new(
                    "bytea: expected hex format (\\x...) or escape format (\\\\ or \\nnn octal)",
                ))
            }
        }
    }
    Ok(out)
}

/// A one-dimensional array, e.g. `{1,2,NULL}` or `{a,"b c","q\"uote"}`.
///
/// Elements are parsed with `T`; use `Vec<Option<T>>` when the array may contain `NULL`.
/// Multi-dimensional arrays are rejected. A custom lower bound (`[0:1]={a,b}`) is accepted and
/// dropped.
///
/// ```
/// # use pgkafka_common::text::FromPgText;
/// let v = Vec::<Option<String>>::from_pg_text(r#"{a,"b c",NULL,"NULL","q\"uote"}"#)?;
/// assert_eq!(v, [Some("a".into()), Some("b c".into()), None, Some("NULL".into()), Some("q\"uote".into())]);
/// assert_eq!(Vec::<i32>::from_pg_text("{}")?, Vec::<i32>::new());
/// assert!(Vec::<i32>::from_pg_text("{1,NULL}").is_err());
/// # Ok::<(), pgkafka_common::text::ParseTextError>(())
/// ```
impl<T: FromPgText> FromPgText for Vec<T> {
    fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
        parse_array(text)?
            .into_iter()
            .enumerate()
            .map(|(i, element)| {
                from_pg_value(element.as_deref())
                    .map_err(|e| ParseTextError::new(format_args!("array element {}: {}", i + 1, e.reason())))
            })
            .collect()
    }
}

/// Splits the text of a one-dimensional PostgreSQL array into its elements, unquoted and
/// unescaped; `None` is `NULL`.
///
/// # Errors
/// When the text is not a one-dimensional array literal.
///
/// ```
/// # use pgkafka_common::text::parse_array;
/// assert_eq!(parse_array(r#"{x,"y,z",NULL}"#)?, [Some("x".to_owned()), Some("y,z".to_owned()), None]);
/// # Ok::<(), pgkafka_common::text::ParseTextError>(())
/// ```
pub fn parse_array(text: &str) -> Result<Vec<Option<String>>, ParseTextError> {
    let mut text = text.trim_matches(is_array_space);
    // Arrays with a lower bound other than 1 are printed with their dimensions first.
    if text.starts_with('[') {
        let (dims, rest) =
            text.split_once('=').ok_or_else(|| ParseTextError::new("array: dimension prefix without '='"))?;
        if dims.matches('[').count() > 1 {
            return Err(ParseTextError::new("multi-dimensional arrays are not supported"));
        }
        text = rest.trim_start_matches(is_array_space);
    }
    let body = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(|| ParseTextError::new("expected an array literal in braces, like {1,2,3}"))?;
    let mut elements = Vec::new();
    if body.trim_matches(is_array_space).is_empty() {
        return Ok(elements);
    }
    let mut chars = body.chars().peekable();
    loop {
        while chars.next_if(|c| is_array_space(*c)).is_some() {}
        let element = match chars.peek() {
            Some('{') => return Err(ParseTextError::new("multi-dimensional arrays are not supported")),
            Some('"') => {
                chars.next();
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => value.push(c),
                            None => return Err(ParseTextError::new("array: unterminated escape")),
                        },
                        Some(c) => value.push(c),
                        None => return Err(ParseTextError::new("array: unterminated quoted element")),
                    }
                }
                while chars.next_if(|c| is_array_space(*c)).is_some() {}
                Some(value)
            }
            _ => {
                let mut value = String::new();
                // Trailing unquoted spaces are dropped, escaped ones kept.
                let mut kept_len = 0;
                let mut escaped_any = false;
                while let Some(&c) = chars.peek() {
                    match c {
                        ',' | '}' => break,
                        '"' | '{' => return Err(ParseTextError::new(format_args!("array: unexpected {c:?} in an unquoted element"))),
                        '\\' => {
                            chars.next();
                            match chars.next() {
                                Some(e) => value.push(e),
                                None => return Err(ParseTextError::new("array: unterminated escape")),
                            }
                            escaped_any = true;
                            kept_len = value.len();
                        }
                        _ => {
                            chars.next();
                            value.push(c);
                            if !is_array_space(c) {
                                kept_len = value.len();
                            }
                        }
                    }
                }
                value.truncate(kept_len);
                if value.is_empty() {
                    return Err(ParseTextError::new("array: empty unquoted element"));
                }
                if !escaped_any && value.eq_ignore_ascii_case("NULL") {
                    None
                } else {
                    Some(value)
                }
            }
        };
        elements.push(element);
        match chars.next() {
            Some(',') => {}
            None => return Ok(elements),
            Some(c) => return Err(ParseTextError::new(format_args!("array: expected ',' or the end, found {c:?}"))),
        }
    }
}

fn is_array_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// Renders elements as PostgreSQL prints a one-dimensional text array: every element quoted,
/// `NULL` bare. The inverse of [`parse_array`]; handy for tests and for building literals.
///
/// ```
/// # use pgkafka_common::text::{parse_array, render_array};
/// let values = vec![Some("a b".to_owned()), None, Some(r#"q"\"#.to_owned())];
/// assert_eq!(render_array(&values), r#"{"a b",NULL,"q\"\\"}"#);
/// assert_eq!(parse_array(&render_array(&values))?, values);
/// # Ok::<(), pgkafka_common::text::ParseTextError>(())
/// ```
#[must_use]
pub fn render_array(elements: &[Option<String>]) -> String {
    let mut out = String::from("{");
    for (i, element) in elements.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match element {
            None => out.push_str("NULL"),
            Some(value) => {
                out.push('"');
                for c in value.chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
        }
    }
    out.push('}');
    out
}

impl FromPgText for serde_json::Value {
    fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
        serde_json::from_str(text).map_err(|e| ParseTextError::new(format_args!("invalid JSON: {e}")))
    }
}

/// A `json` or `jsonb` column deserialized into any `T: Deserialize`.
///
/// ```
/// # use pgkafka_common::text::{FromPgText, Json};
/// #[derive(serde::Deserialize, Debug, PartialEq)]
/// struct Dims { w: u32, h: u32 }
///
/// let Json(dims) = Json::<Dims>::from_pg_text(r#"{"h": 2, "w": 1}"#)?;
/// assert_eq!(dims, Dims { w: 1, h: 2 });
/// # Ok::<(), pgkafka_common::text::ParseTextError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Json<T>(pub T);

impl<T: serde::de::DeserializeOwned> FromPgText for Json<T> {
    fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
        serde_json::from_str(text).map(Json).map_err(|e| ParseTextError::new(format_args!("invalid JSON for this type: {e}")))
    }
}

impl<T> std::ops::Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Any `T: FromStr` parsed with its `FromStr` implementation; for foreign types you cannot
/// implement [`FromPgText`] for. For your own types, prefer
/// [`from_pg_text_via_from_str!`](crate::from_pg_text_via_from_str).
///
/// ```
/// # use pgkafka_common::text::{FromPgText, ViaFromStr};
/// use std::net::IpAddr;
/// let ViaFromStr(ip) = ViaFromStr::<IpAddr>::from_pg_text("10.0.0.1")?;
/// assert!(ip.is_ipv4());
/// # Ok::<(), pgkafka_common::text::ParseTextError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ViaFromStr<T>(pub T);

impl<T> FromPgText for ViaFromStr<T>
where
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
        text.parse().map(ViaFromStr).map_err(ParseTextError::new)
    }
}

impl<T> std::ops::Deref for ViaFromStr<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Implements [`FromPgText`](crate::text::FromPgText) for types that implement
/// [`FromStr`](std::str::FromStr) with a `Display`-able error. See the [module](crate::text)
/// documentation for an example.
#[macro_export]
macro_rules! from_pg_text_via_from_str {
    ($($ty:ty),+ $(,)?) => {$(
        impl $crate::text::FromPgText for $ty {
            fn from_pg_text(text: &str) -> ::core::result::Result<Self, $crate::text::ParseTextError> {
                <$ty as ::core::str::FromStr>::from_str(text).map_err($crate::text::ParseTextError::new)
            }
        }
    )+};
}

pub use crate::from_pg_text_via_from_str;

#[cfg(feature = "uuid")]
impl FromPgText for uuid::Uuid {
    fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
        uuid::Uuid::parse_str(text).map_err(|e| ParseTextError::new(format_args!("expected a uuid: {e}")))
    }
}

#[cfg(feature = "rust_decimal")]
impl FromPgText for rust_decimal::Decimal {
    fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
        match text {
            "NaN" | "Infinity" | "-Infinity" => Err(ParseTextError::new(format_args!(
                "numeric {text} has no rust_decimal::Decimal equivalent"
            ))),
            // Exact: a value with more digits than Decimal holds is an error, not silently rounded.
            _ => rust_decimal::Decimal::from_str_exact(text)
                .map_err(|e| ParseTextError::new(format_args!("expected a numeric that fits rust_decimal::Decimal: {e}"))),
        }
    }
}

/// Date and time text in PostgreSQL's ISO `DateStyle`, split into its parts; shared by the
/// `chrono` and `time` implementations.
#[cfg(any(feature = "chrono", feature = "time"))]
mod iso {
    use super::ParseTextError;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct Date {
        pub(crate) year: i32,
        pub(crate) month: u32,
        pub(crate) day: u32,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct Time {
        pub(crate) hour: u32,
        pub(crate) minute: u32,
        pub(crate) second: u32,
        pub(crate) nano: u32,
    }

    fn digits(text: &str, what: &str) -> Result<u32, ParseTextError> {
        if text.is_empty() || text.len() > 9 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseTextError::new(format_args!("expected digits for the {what}")));
        }
        text.parse().map_err(|_| ParseTextError::new(format_args!("expected digits for the {what}")))
    }

    fn reject_specials(text: &str) -> Result<(), ParseTextError> {
        if text.ends_with(" BC") {
            return Err(ParseTextError::new("BC dates are not supported"));
        }
        if matches!(text, "infinity" | "-infinity") {
            return Err(ParseTextError::new(format_args!("{text} has no equivalent in this type")));
        }
        Ok(())
    }

    pub(crate) fn date(text: &str) -> Result<Date, ParseTextError> {
        reject_specials(text)?;
        // The year may have more than four digits; month and day never do.
        let mut parts = text.rsplitn(3, '-');
        let (Some(day), Some(month), Some(year)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(ParseTextError::new("expected a date like 2024-01-31 (DateStyle ISO)"));
        };
        if month.len() != 2 || day.len() != 2 || year.len() < 4 {
            return Err(ParseTextError::new("expected a date like 2024-01-31 (DateStyle ISO)"));
        }
        let year = i32::try_from(digits(year, "year")?).map_err(|_| ParseTextError::new("year out of range"))?;
        Ok(Date { year, month: digits(month, "month")?, day: digits(day, "day")? })
    }

    pub(crate) fn time(text: &str) -> Result<Time, ParseTextError> {
        let (hms, fraction) = match text.split_once('.') {
            Some((hms, fraction)) => (hms, Some(fraction)),
            None => (text, None),
        };
        let mut parts = hms.split(':');
        let (Some(h), Some(m), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(ParseTextError::new("expected a time like 13:45:00.123456"));
        };
        if h.len() != 2 || m.len() != 2 || s.len() != 2 {
            return Err(ParseTextError::new("expected a time like 13:45:00.123456"));
        }
        let nano = match fraction {
            None => 0,
            Some(f) => {
                if f.is_empty() || f.len() > 9 {
                    return Err(ParseTextError::new("expected 1 to 9 fractional digits of a second"));
                }
                let padded = format!("{f:0<9}");
                digits(&padded, "fraction of a second")?
            }
        };
        Ok(Time { hour: digits(h, "hour")?, minute: digits(m, "minute")?, second: digits(s, "second")?, nano })
    }

    /// `2024-01-31 13:45:00.5`, with an optional UTC offset: `+05`, `-03:30`, `+00:19:32`.
    pub(crate) fn timestamp(text: &str) -> Result<(Date, Time, Option<i32>), ParseTextError> {
        reject_specials(text)?;
        let (date_text, rest) = text
            .split_once(' ')
            .ok_or_else(|| ParseTextError::new("expected a timestamp like 2024-01-31 13:45:00 (DateStyle ISO)"))?;
        let (time_text, offset) = match rest.find(['+', '-']) {
            Some(at) => {
                let (time_text, offset_text) = rest.split_at(at);
                (time_text, Some(offset(offset_text)?))
            }
            None => (rest, None),
        };
        Ok((date(date_text)?, time(time_text)?, offset))
    }

    /// `+HH`, `+HH:MM` or `+HH:MM:SS` in seconds east of UTC.
    fn offset(text: &str) -> Result<i32, ParseTextError> {
        let (sign, body) = match text.split_at_checked(1) {
            Some(("+", body)) => (1, body),
            Some(("-", body)) => (-1, body),
            _ => return Err(ParseTextError::new("expected a UTC offset like +02 or -03:30")),
        };
        let mut seconds = 0i32;
        let mut count = 0;
        for (part, scale) in body.split(':').zip([3600, 60, 1]) {
            if part.len() != 2 {
                return Err(ParseTextError::new("expected a UTC offset like +02 or -03:30"));
            }
            let value = i32::try_from(digits(part, "UTC offset")?).map_err(|_| ParseTextError::new("UTC offset out of range"))?;
            seconds += value * scale;
            count += 1;
        }
        if count == 0 || body.split(':').count() > 3 {
            return Err(ParseTextError::new("expected a UTC offset like +02 or -03:30"));
        }
        Ok(sign * seconds)
    }
}

#[cfg(feature = "chrono")]
mod chrono_impls {
    use super::{iso, FromPgText, ParseTextError};
    use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Utc};

    fn date(d: iso::Date) -> Result<NaiveDate, ParseTextError> {
        NaiveDate::from_ymd_opt(d.year, d.month, d.day)
            .ok_or_else(|| ParseTextError::new("date out of range for chrono::NaiveDate"))
    }

    fn time(t: iso::Time) -> Result<NaiveTime, ParseTextError> {
        // PostgreSQL allows 24:00:00, which chrono cannot represent.
        NaiveTime::from_hms_nano_opt(t.hour, t.minute, t.second, t.nano)
            .ok_or_else(|| ParseTextError::new("time out of range for chrono::NaiveTime"))
    }

    impl FromPgText for NaiveDate {
        fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
            date(iso::date(text)?)
        }
    }

    impl FromPgText for NaiveTime {
        fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
            time(iso::time(text)?)
        }
    }

    /// `timestamp` (without time zone).
    impl FromPgText for NaiveDateTime {
        fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
            match iso::timestamp(text)? {
                (d, t, None) => Ok(NaiveDateTime::new(date(d)?, time(t)?)),
                (_, _, Some(_)) => Err(ParseTextError::new(
                    "a timestamp with a UTC offset (timestamptz) cannot be a NaiveDateTime; use DateTime<FixedOffset> or DateTime<Utc>",
                )),
            }
        }
    }

    /// `timestamptz`, keeping the offset the server printed (its `TimeZone` setting).
    impl FromPgText for DateTime<FixedOffset> {
        fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
            match iso::timestamp(text)? {
                (d, t, Some(offset)) => {
                    let offset = FixedOffset::east_opt(offset).ok_or_else(|| ParseTextError::new("UTC offset out of range"))?;
                    NaiveDateTime::new(date(d)?, time(t)?)
                        .and_local_timezone(offset)
                        .single()
                        .ok_or_else(|| ParseTextError::new("timestamp out of range"))
                }
                (_, _, None) => Err(ParseTextError::new(
                    "expected a timestamptz (with a UTC offset); for timestamp without time zone use NaiveDateTime",
                )),
            }
        }
    }

    /// `timestamptz`, converted to UTC.
    impl FromPgText for DateTime<Utc> {
        fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
            DateTime::<FixedOffset>::from_pg_text(text).map(|t| t.with_timezone(&Utc))
        }
    }
}

#[cfg(feature = "time")]
mod time_impls {
    use super::{iso, FromPgText, ParseTextError};
    use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

    fn date(d: iso::Date) -> Result<Date, ParseTextError> {
        let month = u8::try_from(d.month).ok().and_then(|m| Month::try_from(m).ok())
            .ok_or_else(|| ParseTextError::new("month out of range"))?;
        let day = u8::try_from(d.day).map_err(|_| ParseTextError::new("day out of range"))?;
        Date::from_calendar_date(d.year, month, day).map_err(|e| ParseTextError::new(format_args!("date out of range for time::Date: {e}")))
    }

    fn time(t: iso::Time) -> Result<Time, ParseTextError> {
        let part = |v: u32| u8::try_from(v).map_err(|_| ParseTextError::new("time out of range"));
        Time::from_hms_nano(part(t.hour)?, part(t.minute)?, part(t.second)?, t.nano)
            .map_err(|e| ParseTextError::new(format_args!("time out of range for time::Time: {e}")))
    }

    impl FromPgText for Date {
        fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
            date(iso::date(text)?)
        }
    }

    impl FromPgText for Time {
        fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
            time(iso::time(text)?)
        }
    }

    /// `timestamp` (without time zone).
    impl FromPgText for PrimitiveDateTime {
        fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
            match iso::timestamp(text)? {
                (d, t, None) => Ok(PrimitiveDateTime::new(date(d)?, time(t)?)),
                (_, _, Some(_)) => Err(ParseTextError::new(
                    "a timestamp with a UTC offset (timestamptz) cannot be a PrimitiveDateTime; use OffsetDateTime",
                )),
            }
        }
    }

    /// `timestamptz`, keeping the offset the server printed.
    impl FromPgText for OffsetDateTime {
        fn from_pg_text(text: &str) -> Result<Self, ParseTextError> {
            match iso::timestamp(text)? {
                (d, t, Some(offset)) => {
                    let offset = UtcOffset::from_whole_seconds(offset)
                        .map_err(|e| ParseTextError::new(format_args!("UTC offset out of range: {e}")))?;
                    Ok(PrimitiveDateTime::new(date(d)?, time(t)?).assume_offset(offset))
                }
                (_, _, None) => Err(ParseTextError::new(
                    "expected a timestamptz (with a UTC offset); for timestamp without time zone use PrimitiveDateTime",
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    fn parse<T: FromPgText>(text: &str) -> Result<T, ParseTextError> {
        T::from_pg_text(text)
    }

    #[test]
    fn booleans() {
        assert!(parse::<bool>("t").unwrap());
        assert!(!parse::<bool>("f").unwrap());
        assert!(parse::<bool>("true").unwrap());
        assert!(parse::<bool>("yes").is_err());
    }

    #[test]
    fn integers_at_their_limits() {
        assert_eq!(parse::<i16>("-32768").unwrap(), i16::MIN);
        assert_eq!(parse::<i64>("9223372036854775807").unwrap(), i64::MAX);
        assert!(parse::<i32>("2147483648").unwrap_err().reason().contains("integer"));
        assert!(parse::<i32>("1.0").is_err());
    }

    #[test]
    fn floats_with_special_values() {
        assert!(parse::<f64>("NaN").unwrap().is_nan());
        assert_eq!(parse::<f64>("Infinity").unwrap(), f64::INFINITY);
        assert_eq!(parse::<f32>("-Infinity").unwrap(), f32::NEG_INFINITY);
        assert_eq!(parse::<f64>("1e+100").unwrap(), 1e100);
        assert_eq!(parse::<f64>("-1.5e-07").unwrap(), -1.5e-7);
        assert!(parse::<f64>("inf").is_err());
    }

    #[test]
    fn bytea_in_both_formats() {
        assert_eq!(parse::<Vec<u8>>("\\x").unwrap(), Vec::<u8>::new());
        assert_eq!(parse::<Vec<u8>>("\\x00ff7F").unwrap(), vec![0, 255, 127]);
        assert!(parse::<Vec<u8>>("\\x0").is_err());
        assert!(parse::<Vec<u8>>("\\xzz").is_err());
        assert_eq!(parse::<Vec<u8>>("a\\\\b\\000\\377").unwrap(), b"a\\b\x00\xff".to_vec());
        assert!(parse::<Vec<u8>>("\\9").is_err());
    }

    #[test]
    fn arrays() {
        assert_eq!(parse::<Vec<i32>>("{1,2,3}").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse::<Vec<i32>>("[0:1]={5,6}").unwrap(), vec![5, 6]);
        assert_eq!(parse::<Vec<Option<i32>>>("{1,NULL,null}").unwrap(), vec![Some(1), None, None]);
        assert_eq!(parse::<Vec<String>>(r#"{ a b , "c" ,\NULL}"#).unwrap(), vec!["a b", "c", "NULL"]);
        assert_eq!(parse::<Vec<String>>(r#"{"",x}"#).unwrap(), vec!["", "x"]);
        assert_eq!(parse::<Vec<bool>>("{t,f}").unwrap(), vec![true, false]);
        let err = parse::<Vec<i32>>("{1,NULL}").unwrap_err();
        assert!(err.reason().contains("element 2"), "{err}");
        assert!(parse::<Vec<i32>>("{{1,2},{3,4}}").unwrap_err().reason().contains("multi-dimensional"));
        assert!(parse::<Vec<i32>>("[1:2][1:1]={{1},{2}}").unwrap_err().reason().contains("multi-dimensional"));
        assert!(parse::<Vec<i32>>("1,2").is_err());
        assert!(parse::<Vec<String>>(r#"{"a}"#).is_err());
        assert!(parse::<Vec<String>>("{a,}").is_err());
        assert!(parse::<Vec<String>>(r#"{"a"b}"#).is_err());
    }

    #[test]
    fn json_values_and_typed_json() {
        assert_eq!(parse::<serde_json::Value>(r#"{"a": [1, null]}"#).unwrap(), serde_json::json!({"a": [1, null]}));
        assert!(parse::<serde_json::Value>("{").is_err());
        let Json(v) = parse::<Json<Vec<u8>>>("[1, 2]").unwrap();
        assert_eq!(v, vec![1, 2]);
        assert!(parse::<Json<Vec<u8>>>(r#"["x"]"#).is_err());
    }

    #[test]
    fn null_only_for_options() {
        assert_eq!(from_pg_value::<Option<i32>>(None).unwrap(), None);
        assert!(from_pg_value::<i32>(None).is_err());
        assert_eq!(from_pg_value::<Option<i32>>(Some("4")).unwrap(), Some(4));
    }

    #[test]
    fn chars() {
        assert_eq!(parse::<char>("é").unwrap(), 'é');
        assert!(parse::<char>("ab").is_err());
        assert!(parse::<char>("").is_err());
    }

    #[cfg(feature = "chrono")]
    #[test]
    fn chrono_timestamps() {
        use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Utc};
        assert_eq!(
            parse::<NaiveDateTime>("2024-02-29 13:45:01.000123").unwrap(),
            NaiveDate::from_ymd_opt(2024, 2, 29).unwrap().and_hms_micro_opt(13, 45, 1, 123).unwrap()
        );
        let t = parse::<DateTime<FixedOffset>>("2024-01-01 00:00:00+05:30").unwrap();
        assert_eq!(t.offset().local_minus_utc(), 5 * 3600 + 30 * 60);
        let t = parse::<DateTime<FixedOffset>>("1900-01-01 00:00:00-00:19:32").unwrap();
        assert_eq!(t.offset().local_minus_utc(), -(19 * 60 + 32));
        let t = parse::<DateTime<Utc>>("2024-01-01 00:00:00.5-03").unwrap();
        assert_eq!(t.to_rfc3339(), "2024-01-01T03:00:00.500+00:00");
        assert_eq!(parse::<NaiveDate>("12345-06-07").unwrap(), NaiveDate::from_ymd_opt(12345, 6, 7).unwrap());
        assert!(parse::<NaiveDate>("0044-03-15 BC").unwrap_err().reason().contains("BC"));
        assert!(parse::<NaiveDateTime>("infinity").unwrap_err().reason().contains("infinity"));
        assert!(parse::<NaiveDateTime>("2024-01-01 00:00:00+00").is_err());
        assert!(parse::<DateTime<Utc>>("2024-01-01 00:00:00").is_err());
        assert_eq!(parse::<NaiveTime>("23:59:59.999999").unwrap(), NaiveTime::from_hms_micro_opt(23, 59, 59, 999_999).unwrap());
        assert!(parse::<NaiveTime>("24:00:00").is_err());
    }

    #[cfg(feature = "time")]
    #[test]
    fn time_timestamps() {
        use time::macros::{date, datetime, offset};
        assert_eq!(parse::<time::PrimitiveDateTime>("2024-02-29 13:45:01.5").unwrap(), datetime!(2024-02-29 13:45:01.5));
        assert_eq!(
            parse::<time::OffsetDateTime>("2024-01-01 00:00:00-03:30").unwrap(),
            datetime!(2024-01-01 00:00:00).assume_offset(offset!(-03:30))
        );
        assert_eq!(parse::<time::Date>("2000-01-01").unwrap(), date!(2000-01-01));
        assert!(parse::<time::Date>("2000-01-01 BC").unwrap_err().reason().contains("BC"));
    }

    #[cfg(feature = "rust_decimal")]
    #[test]
    fn decimals() {
        assert_eq!(parse::<rust_decimal::Decimal>("-123.4500").unwrap().to_string(), "-123.4500");
        assert!(parse::<rust_decimal::Decimal>("NaN").unwrap_err().reason().contains("NaN"));
    }

    #[cfg(feature = "uuid")]
    #[test]
    fn uuids() {
        assert_eq!(
            parse::<uuid::Uuid>("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap().to_string(),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
        assert!(parse::<uuid::Uuid>("nope").is_err());
    }

    fn never_panics(text: &str) {
        let _ = parse::<bool>(text);
        let _ = parse::<i16>(text);
        let _ = parse::<i64>(text);
        let _ = parse::<f32>(text);
        let _ = parse::<f64>(text);
        let _ = parse::<char>(text);
        let _ = parse::<Vec<u8>>(text);
        let _ = parse::<Vec<Option<String>>>(text);
        let _ = parse::<Vec<i32>>(text);
        let _ = parse::<serde_json::Value>(text);
        #[cfg(feature = "chrono")]
        {
            let _ = parse::<chrono::NaiveDateTime>(text);
            let _ = parse::<chrono::DateTime<chrono::FixedOffset>>(text);
            let _ = parse::<chrono::NaiveDate>(text);
            let _ = parse::<chrono::NaiveTime>(text);
        }
        #[cfg(feature = "time")]
        {
            let _ = parse::<time::PrimitiveDateTime>(text);
            let _ = parse::<time::OffsetDateTime>(text);
            let _ = parse::<time::Date>(text);
            let _ = parse::<time::Time>(text);
        }
        #[cfg(feature = "rust_decimal")]
        let _ = parse::<rust_decimal::Decimal>(text);
        #[cfg(feature = "uuid")]
        let _ = parse::<uuid::Uuid>(text);
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            never_panics(&text);
        }

        #[test]
        fn text_shaped_like_values_never_panics(text in r#"[-+0-9.:eE NaIfinty{}\\",x\[\]=BC]{0,40}"#) {
            never_panics(&text);
        }

        #[test]
        fn arrays_round_trip(values in proptest::collection::vec(proptest::option::of(any::<String>()), 0..8)) {
            prop_assert_eq!(parse_array(&render_array(&values)).unwrap(), values);
        }

        #[test]
        fn integer_arrays_round_trip(values in proptest::collection::vec(proptest::option::of(any::<i64>()), 0..8)) {
            let text = format!("{{{}}}", values.iter().map(|v| v.map_or("NULL".to_owned(), |v| v.to_string())).collect::<Vec<_>>().join(","));
            prop_assert_eq!(parse::<Vec<Option<i64>>>(&text).unwrap(), values);
        }

        #[test]
        fn floats_round_trip(v in any::<f64>()) {
            prop_assume!(v.is_finite());
            prop_assert_eq!(parse::<f64>(&v.to_string()).unwrap(), v);
        }

        #[test]
        fn bytea_hex_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let text = format!("\\x{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
            prop_assert_eq!(parse::<Vec<u8>>(&text).unwrap(), bytes);
        }
    }
}
