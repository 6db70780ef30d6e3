//! Typed tables: [`ReplicatedTable`] (what `#[derive(ReplicatedTable)]` implements), the
//! [`DecodeError`] of a row that does not fit, and [`TypedOp`], a [`ReplicationOp`] with typed rows.

use std::fmt;

use crate::ident::TableName;
use crate::text::FromPgText;
use crate::{Lsn, Op, ReplicationOp, TopicInfo};

/// A Rust type that stands for one replicated table: where its changes go in Kafka, and how a row
/// of it is decoded.
///
/// Derive it with `#[derive(ReplicatedTable)]` (re-exported by `pgkafka`), or implement it by
/// hand with [`RowDecoder`]:
///
/// ```
/// use pgkafka_common::{Column, DecodeError, ReplicatedTable, RowDecoder};
///
/// struct Inventory { organization_id: i64, sku: String, quantity: Option<i32> }
///
/// impl ReplicatedTable for Inventory {
///     const SCHEMA: &'static str = "public";
///     const TABLE: &'static str = "inventory";
///     const TABLE_NAME: &'static str = "inventory";
///     const TOPIC: &'static str = "inventory_topic";
///     const PARTITION_KEY: &'static [&'static str] = &["organization_id"];
///     const COLUMNS: &'static [Column] = &[
///         Column::new("organization_id", "i64"),
///         Column::new("sku", "String"),
///         Column::new("quantity", "Option<i32>").nullable(),
///     ];
///
///     fn decode(col_names: &[String], row: &[Option<String>]) -> Result<Self, DecodeError> {
///         let row = RowDecoder::new(Self::TABLE_NAME, col_names, row)?;
///         Ok(Inventory {
///             organization_id: row.get("organization_id", "i64")?,
///             sku: row.get("sku", "String")?,
///             quantity: row.get("quantity", "Option<i32>")?,
///         })
///     }
/// }
///
/// let cols = vec!["sku".to_owned(), "organization_id".to_owned(), "added_later".to_owned()];
/// let item = Inventory::decode(&cols, &[Some("A-1".into()), Some("42".into()), Some("x".into())])?;
/// assert_eq!((item.organization_id, item.sku.as_str(), item.quantity), (42, "A-1", None));
/// assert_eq!(Inventory::topic_info().partition_key, ["organization_id"]);
/// # Ok::<(), DecodeError>(())
/// ```
pub trait ReplicatedTable: Sized {
    /// The table's schema, `public` unless the derive says otherwise.
    const SCHEMA: &'static str;
    /// The table's name, without the schema.
    const TABLE: &'static str;
    /// The name the producer writes to [`ReplicationOp::table_name`] and the key of the topic map:
    /// `TABLE` for tables of the `public` schema, `SCHEMA.TABLE` otherwise.
    const TABLE_NAME: &'static str;
    /// The Kafka topic the table's changes go to.
    const TOPIC: &'static str;
    /// The columns whose values form the Kafka message key; empty means the primary key.
    const PARTITION_KEY: &'static [&'static str];
    /// The columns this type reads, in field order.
    const COLUMNS: &'static [Column];

    /// Decodes one row. Columns are matched by name: their order does not matter, and columns
    /// this type does not read are ignored.
    ///
    /// # Errors
    /// A [`DecodeError`] naming the table, column, value and target type, when a column this type
    /// needs is missing or `NULL`, or a value does not parse.
    fn decode(col_names: &[String], row: &[Option<String>]) -> Result<Self, DecodeError>;

    /// The topic-map entry for this table.
    #[must_use]
    fn topic_info() -> TopicInfo {
        TopicInfo::new(Self::TOPIC, Self::PARTITION_KEY.iter().copied())
    }

    /// Whether `table_name` (as in a [`ReplicationOp`]) names this table: `TABLE_NAME` or, for the
    /// `public` schema, also `public.TABLE` (see [`TableName::matches`]).
    #[must_use]
    fn is_table(table_name: &str) -> bool {
        table_name == Self::TABLE_NAME || TableName { schema: Self::SCHEMA, table: Self::TABLE }.matches(table_name)
    }
}

/// A column a [`ReplicatedTable`] reads, as its field declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Column {
    /// The column's name.
    pub name: &'static str,
    /// The field's Rust type, as written.
    pub rust_type: &'static str,
    /// The field accepts `NULL` (and an absent column): its type is written `Option<..>`.
    pub nullable: bool,
    /// The field has a value for an absent column (`#[replicated(default)]`).
    pub has_default: bool,
}

impl Column {
    /// A column read into a field that accepts neither `NULL` nor absence.
    #[must_use]
    pub const fn new(name: &'static str, rust_type: &'static str) -> Self {
        Self { name, rust_type, nullable: false, has_default: false }
    }

    /// This column with `nullable` set.
    #[must_use]
    pub const fn nullable(self) -> Self {
        Self { nullable: true, ..self }
    }

    /// This column with `nullable` set to `nullable`.
    #[must_use]
    pub const fn nullable_if(self, nullable: bool) -> Self {
        Self { nullable, ..self }
    }

    /// This column with `has_default` set.
    #[must_use]
    pub const fn with_default(self) -> Self {
        Self { has_default: true, ..self }
    }
}

/// Longest value, in characters, quoted in a [`DecodeError`]; longer values are cut with `…`.
pub const MAX_QUOTED_VALUE_CHARS: usize = 64;

/// A row that does not decode into its Rust type.
///
/// Every variant names the table (as in [`ReplicatedTable::TABLE_NAME`]); column errors name the
/// column, the Rust type it was decoded into and, for parse errors, the value (cut to
/// [`MAX_QUOTED_VALUE_CHARS`] characters, because rows can hold megabytes).
///
/// ```
/// # use pgkafka_common::{DecodeError, ReplicatedTable};
/// # #[derive(Debug)] struct T;
/// # impl ReplicatedTable for T {
/// #   const SCHEMA: &'static str = "public"; const TABLE: &'static str = "t"; const TABLE_NAME: &'static str = "t";
/// #   const TOPIC: &'static str = "t"; const PARTITION_KEY: &'static [&'static str] = &[]; const COLUMNS: &'static [pgkafka_common::Column] = &[];
/// #   fn decode(c: &[String], r: &[Option<String>]) -> Result<Self, DecodeError> {
/// #       let row = pgkafka_common::RowDecoder::new("t", c, r)?; let _: i32 = row.get("n", "i32")?; Ok(T) }
/// # }
/// let err = T::decode(&["n".into()], &[Some("twelve".into())]).unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     r#"table t, column n: cannot decode "twelve" as i32: expected an integer: invalid digit found in string"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A column the type needs is not in the op (the table changed, or the topic carries another
    /// table).
    #[error("table {table}: column {column} is missing, and field type {target} has no value for an absent column (use Option<..> or #[replicated(default)])")]
    MissingColumn {
        /// The table.
        table: String,
        /// The missing column.
        column: String,
        /// The Rust type of the field.
        target: &'static str,
    },
    /// A column holds SQL `NULL`, and the field's type cannot.
    #[error("table {table}, column {column}: NULL cannot be decoded as {target} (use Option<..>)")]
    UnexpectedNull {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// The Rust type of the field.
        target: &'static str,
    },
    /// A value does not parse as the field's type.
    #[error("table {table}, column {column}: cannot decode {value:?} as {target}: {reason}")]
    InvalidValue {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// The value, cut to [`MAX_QUOTED_VALUE_CHARS`] characters.
        value: String,
        /// The Rust type of the field.
        target: &'static str,
        /// Why it does not parse.
        reason: String,
    },
    /// The op has a different number of values than column names: it is not a well-formed
    /// `ReplicationOp`.
    #[error("table {table}: the row has {values} values for {columns} column names")]
    RowLength {
        /// The table.
        table: String,
        /// The number of column names.
        columns: usize,
        /// The number of values.
        values: usize,
    },
    /// The op is for another table than the type stands for.
    #[error("an op of table {actual} cannot be decoded as table {expected}")]
    WrongTable {
        /// The type's table.
        expected: &'static str,
        /// The op's table.
        actual: String,
    },
}

impl DecodeError {
    /// An [`InvalidValue`](DecodeError::InvalidValue) error for `value`, cut to length.
    pub fn invalid_value(
        table: impl Into<String>,
        column: impl Into<String>,
        value: &str,
        target: &'static str,
        reason: impl fmt::Display,
    ) -> Self {
        DecodeError::InvalidValue {
            table: table.into(),
            column: column.into(),
            value: truncate(value),
            target,
            reason: reason.to_string(),
        }
    }

    /// The table the error is about.
    #[must_use]
    pub fn table(&self) -> &str {
        match self {
            DecodeError::MissingColumn { table, .. }
            | DecodeError::UnexpectedNull { table, .. }
            | DecodeError::InvalidValue { table, .. }
            | DecodeError::RowLength { table, .. } => table,
            DecodeError::WrongTable { actual, .. } => actual,
        }
    }

    /// The column the error is about, if it is about one.
    #[must_use]
    pub fn column(&self) -> Option<&str> {
        match self {
            DecodeError::MissingColumn { column, .. }
            | DecodeError::UnexpectedNull { column, .. }
            | DecodeError::InvalidValue { column, .. } => Some(column),
            DecodeError::RowLength { .. } | DecodeError::WrongTable { .. } => None,
        }
    }
}

fn truncate(value: &str) -> String {
    match value.char_indices().nth(MAX_QUOTED_VALUE_CHARS) {
        Some((end, _)) => format!("{}…", value.get(..end).unwrap_or_default()),
        None => value.to_owned(),
    }
}

/// Reads the columns of one row by name, turning parse failures into [`DecodeError`]s with full
/// context. The derived [`ReplicatedTable::decode`] is built on it; hand-written ones can be too.
#[derive(Debug, Clone, Copy)]
pub struct RowDecoder<'a> {
    table: &'a str,
    col_names: &'a [String],
    row: &'a [Option<String>],
}

impl<'a> RowDecoder<'a> {
    /// A decoder for `row`, whose values belong to `col_names` position by position.
    ///
    /// # Errors
    /// [`DecodeError::RowLength`] when the two differ in length.
    pub fn new(table: &'a str, col_names: &'a [String], row: &'a [Option<String>]) -> Result<Self, DecodeError> {
        if col_names.len() != row.len() {
            return Err(DecodeError::RowLength { table: table.to_owned(), columns: col_names.len(), values: row.len() });
        }
        Ok(Self { table, col_names, row })
    }

    /// The value of `column`: `None` if there is no such column, `Some(None)` for `NULL`.
    #[must_use]
    pub fn raw(&self, column: &str) -> Option<Option<&'a str>> {
        let index = self.col_names.iter().position(|c| c == column)?;
        self.row.get(index).map(Option::as_deref)
    }

    /// The value of `column` parsed as `T`; `target` is the type's name for error messages.
    /// An absent column or `NULL` gives `T`'s [`from_pg_null`](FromPgText::from_pg_null)
    /// (`None` for `Option`), or an error when `T` has none.
    ///
    /// # Errors
    /// See [`ReplicatedTable::decode`].
    pub fn get<T: FromPgText>(&self, column: &str, target: &'static str) -> Result<T, DecodeError> {
        self.get_or_else(column, target, || T::from_pg_null().ok_or_else(|| self.missing(column, target)))
    }

    /// Like [`get`](Self::get), but an absent column gives `default()` (a `NULL` still goes
    /// through `T`).
    ///
    /// # Errors
    /// See [`ReplicatedTable::decode`].
    pub fn get_or_else<T: FromPgText>(
        &self,
        column: &str,
        target: &'static str,
        default: impl FnOnce() -> Result<T, DecodeError>,
    ) -> Result<T, DecodeError> {
        match self.raw(column) {
            None => default(),
            Some(None) => T::from_pg_null().ok_or_else(|| self.null(column, target)),
            Some(Some(text)) => T::from_pg_text(text).map_err(|e| self.invalid(column, text, target, e)),
        }
    }

    /// The value of `column` parsed by `parse`. `NULL` and an absent column give `Ok(None)` when
    /// `nullable`, and an error otherwise.
    ///
    /// # Errors
    /// See [`ReplicatedTable::decode`].
    pub fn get_with<T, E: fmt::Display>(
        &self,
        column: &str,
        target: &'static str,
        nullable: bool,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<Option<T>, DecodeError> {
        match self.raw(column) {
            None if nullable => Ok(None),
            None => Err(self.missing(column, target)),
            Some(None) if nullable => Ok(None),
            Some(None) => Err(self.null(column, target)),
            Some(Some(text)) => parse(text).map(Some).map_err(|e| self.invalid(column, text, target, e)),
        }
    }

    /// An error for a column that is absent.
    #[must_use]
    pub fn missing(&self, column: &str, target: &'static str) -> DecodeError {
        DecodeError::MissingColumn { table: self.table.to_owned(), column: column.to_owned(), target }
    }

    fn null(&self, column: &str, target: &'static str) -> DecodeError {
        DecodeError::UnexpectedNull { table: self.table.to_owned(), column: column.to_owned(), target }
    }

    fn invalid(&self, column: &str, text: &str, target: &'static str, reason: impl fmt::Display) -> DecodeError {
        DecodeError::invalid_value(self.table, column, text, target, reason)
    }
}

/// A [`ReplicationOp`] whose rows are decoded into `T`.
///
/// ```
/// use pgkafka_common::{Change, DecodeError, ReplicationOp, TypedOp};
/// # use pgkafka_common::{ReplicatedTable, RowDecoder};
/// # #[derive(Debug, PartialEq)] struct Item { id: i64 }
/// # impl ReplicatedTable for Item {
/// #   const SCHEMA: &'static str = "public"; const TABLE: &'static str = "items"; const TABLE_NAME: &'static str = "items";
/// #   const TOPIC: &'static str = "items"; const PARTITION_KEY: &'static [&'static str] = &[]; const COLUMNS: &'static [pgkafka_common::Column] = &[];
/// #   fn decode(c: &[String], r: &[Option<String>]) -> Result<Self, DecodeError> {
/// #       Ok(Item { id: RowDecoder::new(Self::TABLE_NAME, c, r)?.get("id", "i64")? }) }
/// # }
///
/// let op: ReplicationOp = serde_json::from_str(
///     r#"{"table_name":"items","col_names":["id"],"lsn":7,"seq_id":1,"op":{"Update":[["1"],["2"]]}}"#,
/// ).unwrap();
/// let typed = TypedOp::<Item>::from_op(&op)?;
/// assert_eq!(typed.seq_id, 1);
/// assert_eq!(typed.change, Change::Update { old: Item { id: 1 }, new: Item { id: 2 } });
/// # Ok::<(), DecodeError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedOp<T> {
    /// The commit LSN of the transaction that made the change.
    pub lsn: Lsn,
    /// Position of the change within its transaction (see [`ReplicationOp::seq_id`]).
    pub seq_id: u64,
    /// What happened, with the decoded rows.
    pub change: Change<T>,
}

/// A row change with its rows decoded into `T`; the typed [`Op`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<T> {
    /// A new row.
    Insert(T),
    /// A changed row.
    Update {
        /// The row before the change. With the default `REPLICA IDENTITY`, PostgreSQL sends
        /// only the key columns of the old row, so give non-key fields `Option` types or
        /// defaults if you read old rows.
        old: T,
        /// The row after the change.
        new: T,
    },
    /// A deleted row (see [`Change::Update::old`] about which columns it carries).
    Delete(T),
}

impl<T> Change<T> {
    /// The row that identifies the record: the new row of an insert or update, the old row of
    /// a delete.
    #[must_use]
    pub fn row(&self) -> &T {
        match self {
            Change::Insert(row) | Change::Delete(row) | Change::Update { new: row, .. } => row,
        }
    }

    /// The kind of change.
    #[must_use]
    pub fn kind(&self) -> crate::OpKind {
        match self {
            Change::Insert(_) => crate::OpKind::Insert,
            Change::Update { .. } => crate::OpKind::Update,
            Change::Delete(_) => crate::OpKind::Delete,
        }
    }
}

impl<T: ReplicatedTable> TypedOp<T> {
    /// Decodes the rows of `op`.
    ///
    /// # Errors
    /// [`DecodeError::WrongTable`] when `op` is not a change of `T`'s table (see
    /// [`ReplicatedTable::is_table`]), or the error of [`ReplicatedTable::decode`].
    pub fn from_op(op: &ReplicationOp) -> Result<Self, DecodeError> {
        if !T::is_table(&op.table_name) {
            return Err(DecodeError::WrongTable { expected: T::TABLE_NAME, actual: op.table_name.clone() });
        }
        let decode = |row: &[Option<String>]| T::decode(&op.col_names, row);
        let change = match &op.op {
            Op::Insert(row) => Change::Insert(decode(row)?),
            Op::Update((old, new)) => Change::Update { old: decode(old)?, new: decode(new)? },
            Op::Delete(row) => Change::Delete(decode(row)?),
        };
        Ok(TypedOp { lsn: Lsn(op.lsn), seq_id: op.seq_id, change })
    }
}

impl<T: ReplicatedTable> TryFrom<&ReplicationOp> for TypedOp<T> {
    type Error = DecodeError;

    fn try_from(op: &ReplicationOp) -> Result<Self, DecodeError> {
        TypedOp::from_op(op)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Item {
        id: i64,
        name: Option<String>,
        tags: Vec<String>,
    }

    impl ReplicatedTable for Item {
        const SCHEMA: &'static str = "shop";
        const TABLE: &'static str = "items";
        const TABLE_NAME: &'static str = "shop.items";
        const TOPIC: &'static str = "items_topic";
        const PARTITION_KEY: &'static [&'static str] = &["id"];
        const COLUMNS: &'static [Column] =
            &[Column::new("id", "i64"), Column::new("name", "Option<String>").nullable(), Column::new("tags", "Vec<String>").with_default()];

        fn decode(col_names: &[String], row: &[Option<String>]) -> Result<Self, DecodeError> {
            let row = RowDecoder::new(Self::TABLE_NAME, col_names, row)?;
            Ok(Item {
                id: row.get("id", "i64")?,
                name: row.get("name", "Option<String>")?,
                tags: row.get_or_else("tags", "Vec<String>", || Ok(Vec::new()))?,
            })
        }
    }

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|&n| n.to_owned()).collect()
    }

    fn row(values: &[Option<&str>]) -> Vec<Option<String>> {
        values.iter().map(|v| v.map(str::to_owned)).collect()
    }

    #[test]
    fn decodes_by_name_ignoring_extra_columns() {
        let item = Item::decode(&cols(&["extra", "tags", "id"]), &row(&[Some("x"), Some("{a,b}"), Some("7")])).unwrap();
        assert_eq!(item, Item { id: 7, name: None, tags: vec!["a".into(), "b".into()] });
    }

    #[test]
    fn missing_null_and_invalid_values_name_their_context() {
        let err = Item::decode(&cols(&["name"]), &row(&[Some("n")])).unwrap_err();
        assert_eq!(err, DecodeError::MissingColumn { table: "shop.items".into(), column: "id".into(), target: "i64" });
        let err = Item::decode(&cols(&["id"]), &row(&[None])).unwrap_err();
        assert_eq!(err.to_string(), "table shop.items, column id: NULL cannot be decoded as i64 (use Option<..>)");
        let long = "9".repeat(100);
        let err = Item::decode(&cols(&["id"]), &row(&[Some(&long)])).unwrap_err();
        let DecodeError::InvalidValue { value, target, column, .. } = &err else { panic!("{err:?}") };
        assert_eq!((column.as_str(), *target), ("id", "i64"));
        assert_eq!(value.chars().count(), MAX_QUOTED_VALUE_CHARS + 1);
        assert!(value.ends_with('…'));
        let err = Item::decode(&cols(&["id", "name"]), &row(&[Some("1")])).unwrap_err();
        assert!(matches!(err, DecodeError::RowLength { columns: 2, values: 1, .. }));
    }

    #[test]
    fn typed_ops_check_the_table_and_carry_position() {
        let op = ReplicationOp {
            table_name: "shop.items".into(),
            col_names: cols(&["id"]),
            lsn: 99,
            seq_id: 3,
            op: Op::Delete(row(&[Some("5")])),
        };
        let typed = TypedOp::<Item>::from_op(&op).unwrap();
        assert_eq!(typed.lsn, Lsn(99));
        assert_eq!(typed.seq_id, 3);
        assert_eq!(typed.change, Change::Delete(Item { id: 5, name: None, tags: vec![] }));
        let other = ReplicationOp { table_name: "items".into(), ..op };
        assert!(matches!(TypedOp::<Item>::from_op(&other), Err(DecodeError::WrongTable { .. })));
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_rows_never_panics(
            cols in proptest::collection::vec(proptest::sample::select(vec!["id", "name", "tags", "other", ""]), 0..6),
            values in proptest::collection::vec(proptest::option::of(".{0,12}"), 0..6),
        ) {
            let cols: Vec<String> = cols.iter().map(|&c| c.to_owned()).collect();
            let _ = Item::decode(&cols, &values);
            let op = ReplicationOp { table_name: "shop.items".into(), col_names: cols, lsn: 0, seq_id: 0, op: Op::Insert(values) };
            let _ = TypedOp::<Item>::from_op(&op);
        }
    }

    #[test]
    fn public_tables_match_bare_and_qualified_names() {
        struct P;
        impl ReplicatedTable for P {
            const SCHEMA: &'static str = "public";
            const TABLE: &'static str = "p";
            const TABLE_NAME: &'static str = "p";
            const TOPIC: &'static str = "p";
            const PARTITION_KEY: &'static [&'static str] = &[];
            const COLUMNS: &'static [Column] = &[];
            fn decode(_: &[String], _: &[Option<String>]) -> Result<Self, DecodeError> {
                Ok(P)
            }
        }
        assert!(P::is_table("p"));
        assert!(P::is_table("public.p"));
        assert!(!P::is_table("other.p"));
        assert!(!P::is_table("pp"));
    }
}
