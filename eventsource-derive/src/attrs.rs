//! Parsing of the `#[event(...)]` helper attribute, on the enum and on its variants.
//!
//! Every problem is recorded in an [`Errors`] and parsing goes on, so that one compile reports
//! all the misuses at once, each at its own span.

use proc_macro2::Span;
use syn::punctuated::Punctuated;
use syn::{Attribute, Expr, ExprLit, Lit, Meta, Token};

/// The largest schema version the stores accept (they keep it as a 32-bit signed integer).
const MAX_SCHEMA_VERSION: u32 = i32::MAX as u32;

/// Accumulates compile errors so that they are reported together.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    /// Records one more error.
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(first) => first.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// Records an error spanning `tokens`.
    pub(crate) fn spanned(
        &mut self,
        tokens: impl quote::ToTokens,
        message: impl std::fmt::Display,
    ) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// `Err` with every recorded error, or `Ok` if there were none.
    pub(crate) fn finish(self) -> syn::Result<()> {
        match self.0 {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Options of `#[event(...)]` on the enum itself.
pub(crate) struct EnumOptions {
    /// `crate = "path"`: where `DomainEvent`, `EncodeError`, `DecodeError` and
    /// `__private::{serde, serde_json}` are found.
    pub(crate) krate: Option<syn::Path>,
}

/// Options of `#[event(...)]` on a variant.
#[derive(Default)]
pub(crate) struct VariantOptions {
    /// `name = "..."`: the stored type name, with the span of its literal.
    pub(crate) name: Option<(String, Span)>,
    /// `version = N`: the schema version.
    pub(crate) version: Option<u32>,
    /// `upcast = "path::to::fn"`: turns payloads of older versions into this version's.
    pub(crate) upcast: Option<syn::Path>,
}

/// The `key = value` items of every `#[event(...)]` among `attrs`; malformed attributes are
/// recorded in `errors` and skipped.
fn event_items(attrs: &[Attribute], errors: &mut Errors) -> Vec<Meta> {
    let mut items = Vec::new();
    for attr in attrs.iter().filter(|a| a.path().is_ident("event")) {
        if !matches!(attr.meta, Meta::List(_)) {
            errors.spanned(
                attr,
                "expected `#[event(...)]`, e.g. `#[event(name = \"OrderPlaced\", version = 2)]`",
            );
            continue;
        }
        match attr.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated) {
            Ok(list) => items.extend(list),
            Err(error) => errors.push(error),
        }
    }
    items
}

/// The name of an item's key, as written (`crate`, `name`, ...), or `None` for a path with
/// several segments.
fn key_of(meta: &Meta) -> Option<String> {
    meta.path().get_ident().map(ToString::to_string)
}

/// The value of `key = value`, or an error naming the expected form.
fn value_of<'a>(meta: &'a Meta, key: &str, example: &str) -> syn::Result<&'a Expr> {
    match meta {
        Meta::NameValue(nv) => Ok(&nv.value),
        _ => Err(syn::Error::new_spanned(
            meta,
            format!("expected `{key} = {example}`"),
        )),
    }
}

/// A string literal value, or an error.
fn string_value(expr: &Expr, key: &str, example: &str) -> syn::Result<syn::LitStr> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(lit.clone()),
        _ => Err(syn::Error::new_spanned(
            expr,
            format!("expected a string literal: `{key} = {example}`"),
        )),
    }
}

/// The value of `key = "a::path"`, parsed as a path; `not_a_path` says what was expected when
/// the string is not one.
fn path_value(meta: &Meta, key: &str, example: &str, not_a_path: &str) -> syn::Result<syn::Path> {
    let lit = value_of(meta, key, example).and_then(|v| string_value(v, key, example))?;
    lit.parse::<syn::Path>()
        .map_err(|_| syn::Error::new_spanned(&lit, not_a_path))
}

/// Stores a parsed value in `slot`, or records why not: the parse error, or a second value for
/// the same key.
fn set_once<T>(slot: &mut Option<T>, parsed: syn::Result<T>, meta: &Meta, errors: &mut Errors) {
    match parsed {
        Ok(_) if slot.is_some() => {
            let key = key_of(meta).unwrap_or_default();
            errors.spanned(meta.path(), format!("duplicate `{key}` in #[event(...)]"));
        }
        Ok(value) => *slot = Some(value),
        Err(error) => errors.push(error),
    }
}

/// Parses `#[event(...)]` on the enum: only `crate = "path"` belongs there.
pub(crate) fn enum_options(attrs: &[Attribute], errors: &mut Errors) -> EnumOptions {
    let mut options = EnumOptions { krate: None };
    for meta in event_items(attrs, errors) {
        match key_of(&meta).as_deref() {
            Some("crate") => {
                let parsed = path_value(
                    &meta,
                    "crate",
                    "\"path::to::eventsource\"",
                    "expected a path to the crate that exposes `DomainEvent`, e.g. `crate = \"::eventsource\"`",
                );
                set_once(&mut options.krate, parsed, &meta, errors);
            }
            Some("name" | "version" | "upcast") => errors.spanned(
                meta.path(),
                "`name`, `version` and `upcast` go on a variant of the enum, not on the enum",
            ),
            _ => errors.spanned(
                meta.path(),
                "unknown key in #[event(...)] on the enum; the only one here is `crate = \"path\"`",
            ),
        }
    }
    options
}

/// Parses `#[event(...)]` on a variant: `name = "..."`, `version = N` and `upcast = "path"`.
pub(crate) fn variant_options(attrs: &[Attribute], errors: &mut Errors) -> VariantOptions {
    let mut options = VariantOptions::default();
    for meta in event_items(attrs, errors) {
        match key_of(&meta).as_deref() {
            Some("name") => {
                let parsed = value_of(&meta, "name", "\"OrderPlaced\"")
                    .and_then(|v| string_value(v, "name", "\"OrderPlaced\""))
                    .and_then(|lit| check_name(&lit));
                set_once(&mut options.name, parsed, &meta, errors);
            }
            Some("version") => {
                let parsed = value_of(&meta, "version", "2").and_then(parse_version);
                set_once(&mut options.version, parsed, &meta, errors);
            }
            Some("upcast") => {
                let parsed = path_value(
                    &meta,
                    "upcast",
                    "\"path::to::upcaster\"",
                    "expected a path to a function `fn(u32, serde_json::Value) -> Result<serde_json::Value, E>`, e.g. `upcast = \"upcast_item_added\"`",
                );
                set_once(&mut options.upcast, parsed, &meta, errors);
            }
            Some("crate") => {
                errors.spanned(meta.path(), "`crate` goes on the enum, not on a variant");
            }
            _ => errors.spanned(
                meta.path(),
                "unknown key in #[event(...)]; expected `name = \"...\"`, `version = N` or `upcast = \"path\"`",
            ),
        }
    }
    if let (Some(upcast), None | Some(1)) = (&options.upcast, options.version) {
        errors.spanned(
            upcast,
            "`upcast` turns older schema versions into this one, so it needs `version = N` with N of 2 or more",
        );
    }
    options
}

/// Refuses `#[event(...)]` where it means nothing (on a field).
pub(crate) fn refuse_event_attrs(attrs: &[Attribute], errors: &mut Errors) {
    for attr in attrs.iter().filter(|a| a.path().is_ident("event")) {
        errors.spanned(
            attr,
            "#[event(...)] goes on the enum or on its variants, not on a field",
        );
    }
}

/// A stored type name must be non-empty, without surrounding whitespace, and storable as
/// database text (no NUL).
fn check_name(lit: &syn::LitStr) -> syn::Result<(String, Span)> {
    let name = lit.value();
    if name.is_empty() {
        return Err(syn::Error::new_spanned(
            lit,
            "an event type name must not be empty",
        ));
    }
    if name.contains('\0') {
        return Err(syn::Error::new_spanned(
            lit,
            "an event type name must not contain the NUL character (PostgreSQL text cannot store it)",
        ));
    }
    if name.trim() != name {
        return Err(syn::Error::new_spanned(
            lit,
            "an event type name must not start or end with whitespace",
        ));
    }
    Ok((name, lit.span()))
}

/// A schema version: an integer literal in `1..=i32::MAX`.
fn parse_version(expr: &Expr) -> syn::Result<u32> {
    let Expr::Lit(ExprLit {
        lit: Lit::Int(lit), ..
    }) = expr
    else {
        return Err(syn::Error::new_spanned(
            expr,
            "expected an integer literal: `version = 2`",
        ));
    };
    let range = format!("schema versions go from 1 to {MAX_SCHEMA_VERSION}");
    match lit.base10_parse::<u32>() {
        Ok(version) if (1..=MAX_SCHEMA_VERSION).contains(&version) => Ok(version),
        _ => Err(syn::Error::new(lit.span(), range)),
    }
}

/// The span to point at for a variant's type name: its `name = "..."` literal when pinned.
pub(crate) fn name_span(options: &VariantOptions, variant: &syn::Variant) -> Span {
    options
        .name
        .as_ref()
        .map_or_else(|| variant.ident.span(), |(_, span)| *span)
}

/// `#[serde(...)]` attributes among `attrs`, to carry over to a generated helper.
pub(crate) fn serde_attrs(attrs: &[Attribute]) -> Vec<Attribute> {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("serde"))
        .cloned()
        .collect()
}
