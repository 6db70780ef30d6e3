//! Parses the rows of `COPY .. TO STDOUT` in PostgreSQL's text format into values: each
//! type's output form (what pgoutput sends), `\N` as NULL. Pure: bytes in, rows out.
//!
//! The format: one row per line, values separated by tabs, and in a value a backslash escapes
//! itself, the tab and the line end (`\\`, `\t`, `\n`, `\r`, also `\b`, `\f`, `\v`; octal `\NNN`
//! and hex `\xHH` are read too, though the server writes none). So a raw newline always ends a
//! row, whichever way the server splits the stream into messages.

/// A row's values, NULL as `None`.
pub(crate) type TextRow = Vec<Option<String>>;

/// Splits a COPY text stream, fed in pieces of any size, into rows of `width` values.
#[derive(Debug)]
pub(crate) struct CopyTextRows {
    width: usize,
    /// The start of a row whose end has not come yet.
    partial: Vec<u8>,
    /// Rows already read and sent, whose strings are written over rather than allocated anew.
    spare: Vec<TextRow>,
}

impl CopyTextRows {
    /// A parser of rows of `width` values that fills the rows of `spare` (their strings keep
    /// their capacity) before it allocates new ones.
    pub(crate) fn reusing(width: usize, spare: Vec<TextRow>) -> Self {
        Self { width, partial: Vec::new(), spare }
    }

    /// Parses the rows `data` completes, appending them to `rows`.
    ///
    /// # Errors
    /// A message when a row has another number of values or a value is not UTF-8.
    pub(crate) fn push(&mut self, data: &[u8], rows: &mut Vec<TextRow>) -> Result<(), String> {
        let mut rest = data;
        if !self.partial.is_empty() {
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                self.partial.extend_from_slice(rest);
                return Ok(());
            };
            let (head, tail) = rest.split_at(end);
            self.partial.extend_from_slice(head);
            let mut row = self.spare.pop().unwrap_or_default();
            parse_row(&self.partial, self.width, &mut row)?;
            rows.push(row);
            self.partial.clear();
            rest = tail.get(1..).unwrap_or_default();
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let (line, tail) = rest.split_at(end);
            let mut row = self.spare.pop().unwrap_or_default();
            parse_row(line, self.width, &mut row)?;
            rows.push(row);
            rest = tail.get(1..).unwrap_or_default();
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    /// The stream ended.
    ///
    /// # Errors
    /// A message when it ended inside a row.
    pub(crate) fn finish(&self) -> Result<(), String> {
        if self.partial.is_empty() {
            Ok(())
        } else {
            Err(format!("the COPY data ended inside a row ({} bytes without a line end)", self.partial.len()))
        }
    }
}

/// One line (without its line end) as `width` values, written over `row`'s.
fn parse_row(line: &[u8], width: usize, row: &mut TextRow) -> Result<(), String> {
    let mut count = 0;
    for field in line.split(|&b| b == b'\t') {
        match row.get_mut(count) {
            Some(value) => parse_value(field, value)?,
            None => {
                let mut value = None;
                parse_value(field, &mut value)?;
                row.push(value);
            }
        }
        count += 1;
    }
    row.truncate(count);
    if count != width {
        return Err(format!("a COPY row has {count} values where {width} were selected"));
    }
    Ok(())
}

/// One value into `value`: `\N` is NULL, escapes are undone. A string already there is
/// reused.
fn parse_value(field: &[u8], value: &mut Option<String>) -> Result<(), String> {
    if field == b"\\N" {
        *value = None;
        return Ok(());
    }
    let text = value.get_or_insert_with(String::new);
    text.clear();
    if !field.contains(&b'\\') {
        let field = std::str::from_utf8(field).map_err(|e| format!("a COPY value is not UTF-8: {e}"))?;
        text.push_str(field);
        return Ok(());
    }
    let unescaped = String::from_utf8(unescape(field)).map_err(|e| format!("a COPY value is not UTF-8: {e}"))?;
    text.push_str(&unescaped);
    Ok(())
}

fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut bytes = field.iter().copied().peekable();
    while let Some(byte) = bytes.next() {
        if byte != b'\\' {
            out.push(byte);
            continue;
        }
        let Some(escaped) = bytes.next() else {
            // A trailing lone backslash: PostgreSQL's reader keeps it.
            out.push(b'\\');
            break;
        };
        let value = match escaped {
            b'0'..=b'7' => {
                let mut value = u32::from(escaped - b'0');
                for _ in 0..2 {
                    match bytes.peek() {
                        Some(&digit @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(digit - b'0');
                            bytes.next();
                        }
                        _ => break,
                    }
                }
                // Like PostgreSQL, an octal escape sets one byte (the low eight bits).
                (value & 0xff) as u8
            }
            b'x' if bytes.peek().is_some_and(u8::is_ascii_hexdigit) => {
                let mut value = 0u8;
                for _ in 0..2 {
                    match bytes.peek().and_then(|d| (*d as char).to_digit(16)) {
                        Some(digit) => {
                            value = value * 16 + digit as u8;
                            bytes.next();
                        }
                        None => break,
                    }
                }
                value
            }
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 0x0b,
            other => other,
        };
        out.push(value);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use proptest::prelude::*;

    use super::*;

    /// A value as the server writes it (`CopyAttributeOutText`).
    fn escape(value: &str) -> String {
        let mut out = String::new();
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\u{b}' => out.push_str("\\v"),
                c => out.push(c),
            }
        }
        out
    }

    fn line(row: &[Option<String>]) -> String {
        let fields: Vec<String> = row.iter().map(|v| v.as_deref().map_or("\\N".to_owned(), escape)).collect();
        format!("{}\n", fields.join("\t"))
    }

    fn parse(data: &[&[u8]], width: usize) -> Result<Vec<TextRow>, String> {
        let mut parser = CopyTextRows::reusing(width, Vec::new());
        let mut rows = Vec::new();
        for piece in data {
            parser.push(piece, &mut rows)?;
        }
        parser.finish()?;
        Ok(rows)
    }

    #[test]
    fn values_nulls_and_escapes_come_back_as_the_output_form() {
        let data = b"1\t\\N\tt\ta\\tb\\nc\\\\d\\re\n2\t\\\\N\t\t{\"k\": \"v\"}\n";
        let rows = parse(&[data], 4).unwrap();
        assert_eq!(
            rows,
            vec![
                vec![Some("1".into()), None, Some("t".into()), Some("a\tb\nc\\d\re".into())],
                vec![Some("2".into()), Some("\\N".into()), Some(String::new()), Some("{\"k\": \"v\"}".into())],
            ]
        );
    }

    #[test]
    fn octal_hex_and_other_escapes_read_as_postgresql_reads_them() {
        let rows = parse(&[b"\\101\\x42\\q\\b\\f\\v\\7x\\xZ\n"], 1).unwrap();
        assert_eq!(rows, vec![vec![Some("ABq\u{8}\u{c}\u{b}\u{7}xxZ".to_owned())]]);
    }

    #[test]
    fn a_row_of_the_wrong_width_or_bytes_that_are_not_utf8_are_errors() {
        assert!(parse(&[b"1\t2\n"], 3).unwrap_err().contains("2 values where 3"));
        assert!(parse(&[b"\xff\n"], 1).unwrap_err().contains("not UTF-8"));
        assert!(parse(&[b"1\n2"], 1).unwrap_err().contains("ended inside a row"));
        assert_eq!(parse(&[], 1).unwrap(), Vec::<TextRow>::new());
    }

    #[test]
    fn spare_rows_are_written_over_whatever_they_held() {
        let spare = vec![vec![Some("old value".to_owned()), None, Some("x".into()), Some("extra".into())], vec![]];
        let mut parser = CopyTextRows::reusing(3, spare);
        let mut rows = Vec::new();
        parser.push(b"a\t\\N\tb\\tc\n1\t2\t3\n\\N\t\t\\N\n", &mut rows).unwrap();
        parser.finish().unwrap();
        assert_eq!(
            rows,
            vec![
                vec![Some("a".into()), None, Some("b\tc".into())],
                vec![Some("1".into()), Some("2".into()), Some("3".into())],
                vec![None, Some(String::new()), None],
            ]
        );
        assert!(rows.iter().any(|row| row.first().and_then(Option::as_ref).is_some_and(|v| v.capacity() >= 9)));
    }

    proptest! {
        /// Any rows, escaped as the server writes them and split into pieces anywhere (even
        /// inside an escape or a UTF-8 character), parse back to themselves.
        #[test]
        fn rows_survive_the_text_format_split_anywhere(
            rows in prop::collection::vec(prop::collection::vec(prop::option::of("(?s).{0,12}"), 3), 0..8),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let data: String = rows.iter().map(|row| line(row)).collect();
            let bytes = data.as_bytes();
            let mut at: Vec<usize> = cuts.iter().map(|cut| cut.index(bytes.len() + 1)).collect();
            at.sort_unstable();
            let mut pieces = Vec::new();
            let mut start = 0;
            for end in at.into_iter().chain(std::iter::once(bytes.len())) {
                pieces.push(&bytes[start..end]);
                start = end;
            }
            prop_assert_eq!(parse(&pieces, 3).unwrap(), rows);
        }
    }
}
