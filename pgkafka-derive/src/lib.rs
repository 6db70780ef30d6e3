//! `#[derive(ReplicatedTable)]`, re-exported as `pgkafka::ReplicatedTable`.
//!
//! See the derive's documentation in `pgkafka` for the attribute syntax. The expansion refers to
//! `::pgkafka::__private`, so the derive is used through `pgkafka`, not on its own.

mod ast;
mod attr;
mod ctxt;
mod expand;
mod valid;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Implements `pgkafka::ReplicatedTable` for a struct with named fields: the table it stands for,
/// its Kafka topic and partition key, and decoding a row by column name.
///
/// ```
/// use pgkafka::ReplicatedTable;
///
/// #[derive(ReplicatedTable, Debug)]
/// #[replicated(table = "inventory", topic = "inventory_topic", partition_key = [organization_id])]
/// struct Inventory {
///     #[replicated(column = "org_id")]
///     organization_id: i64,
///     sku: String,
///     quantity: Option<i32>,
/// }
///
/// assert_eq!(Inventory::TABLE_NAME, "inventory");
/// assert_eq!(Inventory::PARTITION_KEY, ["org_id"]);
/// ```
///
/// Struct options (all optional): `table = "..."` (default: the struct's name in snake_case),
/// `schema = "..."` (default `public`), `topic = "..."` (default: the table name as the
/// producer writes it), `partition_key = [field, ...]` (default: the table's primary key),
/// `crate = "path"` (where pgkafka is, when your dependency on it is renamed; default `::pgkafka`).
///
/// Field options: `column = "..."` (default: the field's name), `parse_with = path::to::fn`
/// (a `fn(&str) -> Result<T, E: Display>`; for an `Option<T>` field it parses `T` and `NULL` is
/// `None`), `default` or `default = path::to::fn` (the value when the column is absent).
#[proc_macro_derive(ReplicatedTable, attributes(replicated))]
pub fn derive_replicated_table(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    derive(&input).into()
}

fn derive(input: &DeriveInput) -> proc_macro2::TokenStream {
    let mut cx = ctxt::Ctxt::default();
    let cont = ast::Container::from_ast(&mut cx, input);
    valid::check(&mut cx, &cont);
    match cx.check() {
        None => expand::expand(&cont),
        Some(error) => {
            let mut out = ctxt::to_compile_errors(&error);
            out.extend(expand::fallback(input));
            out
        }
    }
}
