//! The generated `impl ReplicatedTable`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::DeriveInput;

use crate::ast::{option_inner, type_name, Container, Field};
use crate::attr::DefaultValue;

pub(crate) fn expand(cont: &Container<'_>) -> TokenStream {
    let ident = &cont.input.ident;
    let schema = cont.schema();
    let table = cont.table();
    let table_name = cont.table_name();
    let topic = cont.topic();
    let partition_key: Vec<String> = cont
        .attrs
        .partition_key
        .as_ref()
        .map(|key| {
            key.value
                .iter()
                .filter_map(|k| cont.fields.iter().find(|f| f.ident == k).map(Field::column))
                .collect()
        })
        .unwrap_or_default();
    let columns = cont.fields.iter().map(column_spec);
    let field_inits = cont.fields.iter().map(|field| {
        let name = field.ident;
        let value = decode_field(field);
        quote!(#name: #value)
    });

    let krate = cont.attrs.krate.as_ref().map(|k| &k.value);
    wrap(krate, quote! {
        #[automatically_derived]
        impl __pgk::ReplicatedTable for #ident {
            const SCHEMA: &'static str = #schema;
            const TABLE: &'static str = #table;
            const TABLE_NAME: &'static str = #table_name;
            const TOPIC: &'static str = #topic;
            const PARTITION_KEY: &'static [&'static str] = &[#(#partition_key),*];
            const COLUMNS: &'static [__pgk::Column] = &[#(#columns),*];

            fn decode(
                col_names: &[::std::string::String],
                row: &[::core::option::Option<::std::string::String>],
            ) -> ::core::result::Result<Self, __pgk::DecodeError> {
                let __row = __pgk::RowDecoder::new(
                    <Self as __pgk::ReplicatedTable>::TABLE_NAME,
                    col_names,
                    row,
                )?;
                ::core::result::Result::Ok(Self { #(#field_inits,)* })
            }
        }
    })
}

/// The field's `Column` constant. Nullable means the type is written `Option<..>`: decoding
/// itself asks the type (`FromPgText::from_pg_null`), but naming the trait here too would report
/// an undecodable field type twice.
fn column_spec(field: &Field<'_>) -> TokenStream {
    let ty = field.ty;
    let column = field.column();
    let target = type_name(ty);
    let nullable = option_inner(ty).is_some();
    let default = if field.attrs.default.is_some() { quote!(.with_default()) } else { quote!() };
    quote!(__pgk::Column::new(#column, #target).nullable_if(#nullable) #default)
}

/// The expression that decodes one field from `__row`.
fn decode_field(field: &Field<'_>) -> TokenStream {
    let ty = field.ty;
    let column = field.column();
    let target = type_name(ty);
    let present = match &field.attrs.parse_with {
        None => quote!(__row.get::<#ty>(#column, #target)?),
        Some(parse) => {
            let parse = &parse.value;
            match option_inner(ty) {
                // `Option<T>` with a parser of T: NULL is None, the parser sees only text.
                Some(inner) => quote!(__row.get_with::<#inner, _>(#column, #target, true, #parse)?),
                None => quote! {
                    match __row.get_with::<#ty, _>(#column, #target, false, #parse)? {
                        ::core::option::Option::Some(value) => value,
                        ::core::option::Option::None => {
                            return ::core::result::Result::Err(__row.missing(#column, #target))
                        }
                    }
                },
            }
        }
    };
    match &field.attrs.default {
        None => present,
        Some(default) => {
            let absent = match &default.value {
                DefaultValue::Trait => quote!(<#ty as ::core::default::Default>::default()),
                DefaultValue::Path(path) => quote!(#path()),
            };
            quote! {
                if __row.raw(#column).is_none() { #absent } else { #present }
            }
        }
    }
}

/// The impl in an anonymous const, with the runtime crate under a private alias, so the
/// expansion neither leaks names into nor depends on names in the user's module.
fn wrap(krate: Option<&syn::Path>, body: TokenStream) -> TokenStream {
    let krate = match krate {
        Some(path) => quote!(#path),
        None => quote!(::pgkafka),
    };
    quote! {
        #[doc(hidden)]
        #[allow(non_upper_case_globals, unused_qualifications, clippy::all)]
        const _: () = {
            use #krate::__private as __pgk;
            #body
        };
    }
}

/// What is emitted beside the errors: an impl with the right shape, so one mistake in the
/// attributes gives one error instead of a cascade of "ReplicatedTable is not implemented".
pub(crate) fn fallback(input: &DeriveInput) -> TokenStream {
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    wrap(None, quote! {
        #[automatically_derived]
        impl #impl_generics __pgk::ReplicatedTable for #ident #ty_generics #where_clause {
            const SCHEMA: &'static str = "";
            const TABLE: &'static str = "";
            const TABLE_NAME: &'static str = "";
            const TOPIC: &'static str = "";
            const PARTITION_KEY: &'static [&'static str] = &[];
            const COLUMNS: &'static [__pgk::Column] = &[];

            fn decode(
                _: &[::std::string::String],
                _: &[::core::option::Option<::std::string::String>],
            ) -> ::core::result::Result<Self, __pgk::DecodeError> {
                ::core::unimplemented!()
            }
        }
    })
}
