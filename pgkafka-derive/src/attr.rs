//! Strict parsing of `#[replicated(...)]`: every key is known, none appears twice, and every
//! mistake is reported at the key or value the user wrote.

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::parse::ParseStream;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Ident, LitStr, Path, Token};

use crate::ctxt::Ctxt;

const ATTR: &str = "replicated";

/// A setting and where it was written, so later checks can point at it.
#[derive(Debug, Clone)]
pub(crate) struct Setting<T> {
    pub(crate) value: T,
    pub(crate) span: Span,
}

/// One optional attribute key: rejects a second occurrence.
struct Slot<T> {
    name: &'static str,
    value: Option<Setting<T>>,
}

impl<T> Slot<T> {
    fn new(name: &'static str) -> Self {
        Self { name, value: None }
    }

    fn set(&mut self, cx: &mut Ctxt, path: &Path, value: T) {
        if self.value.is_some() {
            cx.error_spanned_by(path, format!("duplicate `{}` in #[{ATTR}(...)]", self.name));
        } else {
            self.value = Some(Setting { value, span: path.span() });
        }
    }

    fn get(self) -> Option<Setting<T>> {
        self.value
    }
}

impl Slot<String> {
    /// Sets the slot from `key = "value"`; an empty string is reported and leaves it unset.
    fn set_str(&mut self, cx: &mut Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        if let Some(value) = lit_str(cx, meta, self.name)? {
            self.set(cx, &meta.path, value);
        }
        Ok(())
    }
}

impl Slot<Path> {
    /// Sets the slot from `key = path` or `key = "path"`.
    fn set_path(&mut self, cx: &mut Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let value = path_value(meta.value()?)?;
        self.set(cx, &meta.path, value);
        Ok(())
    }
}

/// `#[replicated(...)]` on the struct.
#[derive(Debug, Default)]
pub(crate) struct ContainerAttrs {
    pub(crate) table: Option<Setting<String>>,
    pub(crate) schema: Option<Setting<String>>,
    pub(crate) topic: Option<Setting<String>>,
    pub(crate) partition_key: Option<Setting<Vec<Ident>>>,
    /// `crate = "path"`: where pgkafka is, when the dependency is renamed or re-exported.
    pub(crate) krate: Option<Setting<Path>>,
}

/// How a field gets a value when its column is absent.
#[derive(Debug, Clone)]
pub(crate) enum DefaultValue {
    /// `#[replicated(default)]`: `Default::default()`.
    Trait,
    /// `#[replicated(default = path)]`: `path()`.
    Path(Path),
}

/// `#[replicated(...)]` on a field.
#[derive(Debug, Default)]
pub(crate) struct FieldAttrs {
    pub(crate) column: Option<Setting<String>>,
    pub(crate) parse_with: Option<Setting<Path>>,
    pub(crate) default: Option<Setting<DefaultValue>>,
}

fn is_ours(attr: &Attribute) -> bool {
    attr.path().is_ident(ATTR)
}

fn lit_str(cx: &mut Ctxt, meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<Option<String>> {
    let lit: LitStr = meta.value()?.parse().map_err(|e| {
        syn::Error::new(e.span(), format!("expected a string literal: `{key} = \"...\"`"))
    })?;
    let value = lit.value();
    if value.is_empty() {
        cx.error_spanned_by(&lit, format!("`{key}` must not be empty"));
        return Ok(None);
    }
    Ok(Some(value))
}

/// A path written bare (`parse_with = my::parse`) or, serde-style, in a string
/// (`parse_with = "my::parse"`).
fn path_value(input: ParseStream<'_>) -> syn::Result<Path> {
    if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        lit.parse()
    } else {
        input.parse()
    }
}

pub(crate) fn container(cx: &mut Ctxt, attrs: &[Attribute]) -> ContainerAttrs {
    let mut table = Slot::new("table");
    let mut schema = Slot::new("schema");
    let mut topic = Slot::new("topic");
    let mut partition_key = Slot::new("partition_key");
    let mut krate = Slot::new("crate");
    for_each_option(cx, attrs, |cx, meta| {
        let path = &meta.path;
        if path.is_ident("table") {
            table.set_str(cx, meta)
        } else if path.is_ident("schema") {
            schema.set_str(cx, meta)
        } else if path.is_ident("topic") {
            topic.set_str(cx, meta)
        } else if path.is_ident("partition_key") {
            let fields = field_list(meta.value()?)?;
            partition_key.set(cx, path, fields);
            Ok(())
        } else if path.is_ident("crate") {
            krate.set_path(cx, meta)
        } else if is_field_key(path) {
            Err(misplaced(meta, "a field option; put it on a field. Struct options: table, schema, topic, partition_key, crate"))
        } else {
            Err(unknown(meta, &CONTAINER_KEYS))
        }
    });
    ContainerAttrs {
        table: table.get(),
        schema: schema.get(),
        topic: topic.get(),
        partition_key: partition_key.get(),
        krate: krate.get(),
    }
}

pub(crate) fn field(cx: &mut Ctxt, attrs: &[Attribute]) -> FieldAttrs {
    let mut column = Slot::new("column");
    let mut parse_with = Slot::new("parse_with");
    let mut default = Slot::new("default");
    for_each_option(cx, attrs, |cx, meta| {
        let path = &meta.path;
        if path.is_ident("column") {
            column.set_str(cx, meta)
        } else if path.is_ident("parse_with") {
            parse_with.set_path(cx, meta)
        } else if path.is_ident("default") {
            let value = if meta.input.peek(Token![=]) {
                DefaultValue::Path(path_value(meta.value()?)?)
            } else {
                DefaultValue::Trait
            };
            default.set(cx, path, value);
            Ok(())
        } else if is_container_key(path) {
            Err(misplaced(
                meta,
                &format!("a struct option; put it in the #[{ATTR}(...)] above the struct. Field options: column, parse_with, default"),
            ))
        } else {
            Err(unknown(meta, &FIELD_KEYS))
        }
    });
    FieldAttrs { column: column.get(), parse_with: parse_with.get(), default: default.get() }
}

/// Calls `each` on every option inside the `#[replicated(...)]` attributes of `attrs`; an error
/// it returns is reported, and ends the parsing of that attribute.
fn for_each_option(
    cx: &mut Ctxt,
    attrs: &[Attribute],
    mut each: impl FnMut(&mut Ctxt, &ParseNestedMeta<'_>) -> syn::Result<()>,
) {
    for attr in attrs.iter().filter(|a| is_ours(a)) {
        if let Err(e) = attr.parse_nested_meta(|meta| each(cx, &meta)) {
            cx.syn_error(e);
        }
    }
}

const CONTAINER_KEYS: [&str; 5] = ["table", "schema", "topic", "partition_key", "crate"];
const FIELD_KEYS: [&str; 3] = ["column", "parse_with", "default"];

fn is_field_key(path: &Path) -> bool {
    FIELD_KEYS.iter().any(|k| path.is_ident(k))
}

fn is_container_key(path: &Path) -> bool {
    CONTAINER_KEYS.iter().any(|k| path.is_ident(k))
}

/// `partition_key = [a, b]`.
fn field_list(input: ParseStream<'_>) -> syn::Result<Vec<Ident>> {
    if !input.peek(syn::token::Bracket) {
        return Err(input.error("expected a list of field names: `partition_key = [field, ...]`"));
    }
    let content;
    syn::bracketed!(content in input);
    Ok(Punctuated::<Ident, Token![,]>::parse_terminated(&content)?.into_iter().collect())
}

/// An option written where it does not belong: "`key` is {what}".
fn misplaced(meta: &ParseNestedMeta<'_>, what: &str) -> syn::Error {
    meta.error(format!("`{}` is {what}", path_name(&meta.path)))
}

fn unknown(meta: &ParseNestedMeta<'_>, known: &[&str]) -> syn::Error {
    let name = path_name(&meta.path);
    let hint = known
        .iter()
        .filter(|k| edit_distance(k, &name) <= 2)
        .min_by_key(|k| edit_distance(k, &name))
        .map(|k| format!("did you mean `{k}`? "))
        .unwrap_or_default();
    meta.error(format!("unknown option `{name}`; {hint}expected one of: {}", known.join(", ")))
}

/// Levenshtein distance, for "did you mean" hints on short option names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = i;
        let mut left = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let up = row.get(j + 1).copied().unwrap_or(usize::MAX);
            let value = if ca == *cb { diagonal } else { 1 + diagonal.min(up).min(left) };
            diagonal = up;
            if let Some(slot) = row.get_mut(j + 1) {
                *slot = value;
            }
            left = value;
        }
        if let Some(first) = row.first_mut() {
            *first = i + 1;
        }
    }
    row.last().copied().unwrap_or(0)
}

fn path_name(path: &Path) -> String {
    quote::ToTokens::to_token_stream(path).to_string().replace(' ', "")
}

#[cfg(test)]
mod tests {
    use super::edit_distance;

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("table", "tabel"), 2);
        assert_eq!(edit_distance("column", "colum"), 1);
        assert_eq!(edit_distance("topic", "topic"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
