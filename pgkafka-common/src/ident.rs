//! Names of tables and SQL identifiers: the one home for how pgkafka writes and reads them.
//!
//! Records carry a table's name bare when it lives in the `public` schema and as `schema.table`
//! otherwise (the earlier library's format, kept byte for byte). Every part of pgkafka that
//! writes such a name (the producer, the derive) or matches one (routers, [`ReplicatedTable`](crate::ReplicatedTable))
//! goes through this module, so the rule cannot drift apart.
//!
//! ```
//! use pgkafka_common::ident::{quote_ident, table_name, TableName};
//!
//! assert_eq!(table_name("public", "orders"), "orders");
//! assert_eq!(table_name("sales", "orders"), "sales.orders");
//! assert_eq!(TableName::parse("sales.orders"), TableName { schema: "sales", table: "orders" });
//! assert_eq!(TableName::parse("orders"), TableName { schema: "public", table: "orders" });
//! assert_eq!(quote_ident(r#"odd"name"#), r#""odd""name""#);
//! ```

/// The schema whose tables records name bare.
pub const DEFAULT_SCHEMA: &str = "public";

/// How records name the table `schema.table`: bare in `public`, qualified elsewhere.
#[must_use]
pub fn table_name(schema: &str, table: &str) -> String {
    if schema == DEFAULT_SCHEMA {
        table.to_owned()
    } else {
        format!("{schema}.{table}")
    }
}

/// A record's table name taken apart into schema and table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TableName<'a> {
    /// The schema; `public` for a bare name.
    pub schema: &'a str,
    /// The table.
    pub table: &'a str,
}

impl<'a> TableName<'a> {
    /// Splits `schema.table` at its first dot; a name without a dot is a `public` table.
    ///
    /// Names with dots inside a schema or table name are ambiguous in the record format itself;
    /// the first dot wins, as PostgreSQL schema names with dots are rare and the producer refuses
    /// nothing on that account.
    #[must_use]
    pub fn parse(name: &'a str) -> Self {
        match name.split_once('.') {
            Some((schema, table)) => Self { schema, table },
            None => Self { schema: DEFAULT_SCHEMA, table: name },
        }
    }

    /// Whether a record's `table_name` names this table. `public` tables match both their bare
    /// name and `public.table`.
    #[must_use]
    pub fn matches(&self, record_table_name: &str) -> bool {
        let other = TableName::parse(record_table_name);
        other.schema == self.schema && other.table == self.table
    }

    /// The name records carry for this table.
    #[must_use]
    pub fn record_name(&self) -> String {
        table_name(self.schema, self.table)
    }

    /// The table as an SQL reference, both parts quoted: `"schema"."table"`.
    #[must_use]
    pub fn quoted(&self) -> String {
        qualified(self.schema, self.table)
    }
}

/// `name` as an SQL identifier, always quoted, so reserved words, capitals and odd characters
/// are safe: `"order"`, `"Odd ""name"""`.
#[must_use]
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."table"`.
#[must_use]
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn public_tables_are_bare_and_match_both_spellings() {
        let t = TableName::parse("items");
        assert!(t.matches("items"));
        assert!(t.matches("public.items"));
        assert!(!t.matches("other.items"));
        assert_eq!(t.record_name(), "items");
        assert_eq!(TableName::parse("public.items").record_name(), "items");
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote_ident("order"), "\"order\"");
        assert_eq!(qualified("Sales", "a\"b"), "\"Sales\".\"a\"\"b\"");
    }

    proptest! {
        /// What the producer writes, a router parses back to the same schema and table.
        #[test]
        fn table_name_round_trips(schema in "[a-z_][a-z0-9_]{0,8}", table in "[a-z_][a-z0-9_]{0,8}") {
            let name = table_name(&schema, &table);
            prop_assert_eq!(TableName::parse(&name), TableName { schema: &schema, table: &table });
        }
    }
}
