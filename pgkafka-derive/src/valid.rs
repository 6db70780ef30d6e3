//! Checks of the whole input that no single attribute can make: generics, partition-key names,
//! column clashes.

use std::collections::HashMap;

use crate::ast::Container;
use crate::ctxt::Ctxt;

pub(crate) fn check(cx: &mut Ctxt, cont: &Container<'_>) {
    check_generics(cx, cont);
    check_partition_key(cx, cont);
    check_columns(cx, cont);
}

/// Decoding builds the struct from text alone; a type or lifetime parameter has nothing to come
/// from, so rather than guess bounds we ask for a concrete struct.
fn check_generics(cx: &mut Ctxt, cont: &Container<'_>) {
    let generics = &cont.input.generics;
    if !generics.params.is_empty() || generics.where_clause.is_some() {
        cx.error_spanned_by(
            generics,
            "#[derive(ReplicatedTable)] does not support generic parameters: a row decodes into one concrete struct",
        );
    }
}

fn check_partition_key(cx: &mut Ctxt, cont: &Container<'_>) {
    let Some(key) = &cont.attrs.partition_key else { return };
    let mut seen: Vec<&syn::Ident> = Vec::new();
    for ident in &key.value {
        if seen.contains(&ident) {
            cx.error_spanned_by(ident, format!("`{ident}` appears twice in partition_key"));
            continue;
        }
        seen.push(ident);
        // An input that is not a struct with named fields has been reported already.
        if cont.has_named_fields && !cont.fields.iter().any(|f| f.ident == ident) {
            let known: Vec<String> = cont.fields.iter().map(|f| f.ident.to_string()).collect();
            let known = if known.is_empty() { "it has none".to_owned() } else { format!("fields: {}", known.join(", ")) };
            cx.error_spanned_by(
                ident,
                format!("partition_key names `{ident}`, which is not a field of `{}`; {known}", cont.input.ident),
            );
        }
    }
}

fn check_columns(cx: &mut Ctxt, cont: &Container<'_>) {
    let mut by_column: HashMap<String, &syn::Ident> = HashMap::new();
    for field in &cont.fields {
        let column = field.column();
        if let Some(first) = by_column.get(&column) {
            let at = field.attrs.column.as_ref().map_or_else(
                || syn::Error::new(field.ident.span(), ""),
                |c| syn::Error::new(c.span, ""),
            );
            cx.syn_error(syn::Error::new(
                at.span(),
                format!("fields `{first}` and `{}` both read column `{column}`", field.ident),
            ));
        } else {
            by_column.insert(column, field.ident);
        }
    }
}
