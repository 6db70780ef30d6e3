//! The derive input turned into the model the checks and the expansion work on.

use pgkafka_common::ident;
use syn::{Data, DeriveInput, Fields, Ident, Type};

use crate::attr::{self, ContainerAttrs, FieldAttrs};
use crate::ctxt::Ctxt;

/// A struct with named fields and its `#[replicated]` options.
#[derive(Debug)]
pub(crate) struct Container<'a> {
    pub(crate) input: &'a DeriveInput,
    pub(crate) attrs: ContainerAttrs,
    /// Empty when the input is not a struct with named fields (already reported).
    pub(crate) fields: Vec<Field<'a>>,
    /// Whether the input is a struct with named fields, so field names can be checked.
    pub(crate) has_named_fields: bool,
}

#[derive(Debug)]
pub(crate) struct Field<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) ty: &'a Type,
    pub(crate) attrs: FieldAttrs,
}

impl Field<'_> {
    /// The column the field reads: its `column` option, else its name (without `r#`).
    pub(crate) fn column(&self) -> String {
        match &self.attrs.column {
            Some(column) => column.value.clone(),
            None => {
                let name = self.ident.to_string();
                name.strip_prefix("r#").map(str::to_owned).unwrap_or(name)
            }
        }
    }
}

impl<'a> Container<'a> {
    pub(crate) fn from_ast(cx: &mut Ctxt, input: &'a DeriveInput) -> Self {
        let attrs = attr::container(cx, &input.attrs);
        let fields = match &input.data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(named) => named
                    .named
                    .iter()
                    .filter_map(|f| {
                        let attrs = attr::field(cx, &f.attrs);
                        f.ident.as_ref().map(|ident| Field { ident, ty: &f.ty, attrs })
                    })
                    .collect(),
                Fields::Unnamed(unnamed) => {
                    cx.error_spanned_by(
                        unnamed,
                        "#[derive(ReplicatedTable)] needs named fields (columns are matched by name); tuple structs are not supported",
                    );
                    Vec::new()
                }
                Fields::Unit => {
                    cx.error_spanned_by(
                        &input.ident,
                        "#[derive(ReplicatedTable)] needs a struct with named fields, one per column; unit structs are not supported",
                    );
                    Vec::new()
                }
            },
            Data::Enum(data) => {
                cx.error_spanned_by(
                    data.enum_token,
                    "#[derive(ReplicatedTable)] is for structs with named fields, one per column; enums are not supported",
                );
                Vec::new()
            }
            Data::Union(data) => {
                cx.error_spanned_by(
                    data.union_token,
                    "#[derive(ReplicatedTable)] is for structs with named fields, one per column; unions are not supported",
                );
                Vec::new()
            }
        };
        let has_named_fields = matches!(&input.data, Data::Struct(data) if matches!(data.fields, Fields::Named(_)));
        Container { input, attrs, fields, has_named_fields }
    }

    /// The table name: the `table` option, else the struct's name in snake_case.
    pub(crate) fn table(&self) -> String {
        match &self.attrs.table {
            Some(table) => table.value.clone(),
            None => snake_case(&self.input.ident.to_string()),
        }
    }

    /// The schema: the `schema` option, else `public`.
    pub(crate) fn schema(&self) -> String {
        self.attrs.schema.as_ref().map_or_else(|| ident::DEFAULT_SCHEMA.to_owned(), |s| s.value.clone())
    }

    /// How the producer names the table (see [`ident::table_name`]).
    pub(crate) fn table_name(&self) -> String {
        ident::table_name(&self.schema(), &self.table())
    }

    pub(crate) fn topic(&self) -> String {
        self.attrs.topic.as_ref().map_or_else(|| self.table_name(), |t| t.value.clone())
    }
}

fn snake_case(name: &str) -> String {
    let name = name.strip_prefix("r#").unwrap_or(name);
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// `T` when `ty` is written `Option<T>` (or `std::option::Option<T>`).
pub(crate) fn option_inner(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else { return None };
    if path.qself.is_some() {
        return None;
    }
    let last = path.path.segments.last()?;
    if last.ident != "Option" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else { return None };
    match args.args.first() {
        Some(syn::GenericArgument::Type(inner)) if args.args.len() == 1 => Some(inner),
        _ => None,
    }
}

/// The type as the user wrote it, for error messages: `Option<Vec<i32>>`, not `Option < Vec < i32 > >`.
pub(crate) fn type_name(ty: &Type) -> String {
    let text = quote::ToTokens::to_token_stream(ty).to_string();
    let chars: Vec<char> = text.chars().collect();
    let word = |c: Option<&char>| c.is_some_and(|c| c.is_alphanumeric() || *c == '_' || *c == '\'');
    let mut out = String::with_capacity(text.len());
    for (i, c) in chars.iter().enumerate() {
        if *c == ' ' {
            let before = i.checked_sub(1).and_then(|j| chars.get(j));
            let after = chars.get(i + 1);
            if !(word(before) && word(after)) && before != Some(&',') {
                continue;
            }
        }
        out.push(*c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_cases_struct_names() {
        assert_eq!(snake_case("Inventory"), "inventory");
        assert_eq!(snake_case("OrderLine"), "order_line");
    }

    #[test]
    fn type_names_read_like_source() {
        let ty: Type = syn::parse_quote!(Option<std::vec::Vec<(i32, u8)>>);
        assert_eq!(type_name(&ty), "Option<std::vec::Vec<(i32, u8)>>");
        let ty: Type = syn::parse_quote!(&'static str);
        assert_eq!(type_name(&ty), "&'static str");
    }

    #[test]
    fn finds_option_inner_types() {
        let ty: Type = syn::parse_quote!(std::option::Option<i64>);
        assert!(option_inner(&ty).is_some());
        let ty: Type = syn::parse_quote!(Vec<Option<i64>>);
        assert!(option_inner(&ty).is_none());
    }
}
