//! The event enum as the generator sees it: checked, with every variant's type name, schema
//! version and payload shape.

use std::collections::HashMap;

use proc_macro2::{Group, TokenStream, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::{Attribute, Data, DeriveInput, Fields, Ident, Type};

use crate::attrs::{self, Errors};

/// A checked event enum.
pub(crate) struct EventEnum {
    /// The enum's name.
    pub(crate) ident: Ident,
    /// Where `DomainEvent`, `EncodeError`, `DecodeError` and `__private` live.
    pub(crate) krate: syn::Path,
    /// The variants, in declaration order.
    pub(crate) variants: Vec<EventVariant>,
}

/// One variant: one event type.
pub(crate) struct EventVariant {
    /// The variant's name.
    pub(crate) ident: Ident,
    /// The stored type name.
    pub(crate) name: String,
    /// The schema version.
    pub(crate) version: u32,
    /// The function turning payloads of older versions into this version's, if any.
    pub(crate) upcast: Option<syn::Path>,
    /// What the payload is made of.
    pub(crate) shape: Shape,
}

/// The payload shape of a variant.
pub(crate) enum Shape {
    /// `Confirmed` or `Confirmed {}`: the payload is `{}`.
    Unit {
        /// Whether the variant is written with braces (`Confirmed {}`).
        braced: bool,
    },
    /// `ItemAdded(ItemAdded)`: the payload is the field's own serialization.
    Newtype {
        /// The field's type.
        ty: Type,
        /// `#[serde(...)]` on the field.
        serde_attrs: Vec<Attribute>,
    },
    /// `Placed { customer: String, .. }`: the payload is an object of the fields.
    Struct {
        /// The fields, in declaration order.
        fields: Vec<EventField>,
        /// `#[serde(...)]` on the variant, applied to the payload struct.
        serde_attrs: Vec<Attribute>,
    },
}

/// A named field of a struct variant.
pub(crate) struct EventField {
    /// The field's name.
    pub(crate) ident: Ident,
    /// The field's type, with `Self` replaced by the enum's name.
    pub(crate) ty: Type,
    /// `#[serde(...)]` on the field.
    pub(crate) serde_attrs: Vec<Attribute>,
}

/// Checks the derive input, reporting every misuse at once.
pub(crate) fn parse(input: &DeriveInput) -> syn::Result<EventEnum> {
    let mut errors = Errors::default();
    let data = match &input.data {
        Data::Enum(data) => data,
        Data::Struct(data) => {
            return Err(not_an_enum(
                &data.struct_token,
                &input.ident,
                "a struct; put this struct in a variant: `enum MyEvent { Happened(ThisStruct) }`",
            ));
        }
        Data::Union(data) => {
            return Err(not_an_enum(&data.union_token, &input.ident, "a union"));
        }
    };

    let options = attrs::enum_options(&input.attrs, &mut errors);
    if !input.generics.params.is_empty() || input.generics.where_clause.is_some() {
        let mut spanned = input.generics.to_token_stream();
        input.generics.where_clause.to_tokens(&mut spanned);
        errors.spanned(
            spanned,
            "#[derive(DomainEvent)] does not support generic event enums: an event's stored type name and payload must not depend on a type parameter; use concrete field types",
        );
    }
    if data.variants.is_empty() {
        errors.spanned(
            &input.ident,
            "an event enum needs at least one variant (one per event type)",
        );
    }

    let mut variants = Vec::with_capacity(data.variants.len());
    let mut seen: HashMap<String, Ident> = HashMap::new();
    for variant in &data.variants {
        let variant_options = attrs::variant_options(&variant.attrs, &mut errors);
        for field in &variant.fields {
            attrs::refuse_event_attrs(&field.attrs, &mut errors);
        }
        let name = variant_options
            .name
            .as_ref()
            .map_or_else(|| variant.ident.unraw().to_string(), |(n, _)| n.clone());
        if let Some(first) = seen.get(&name) {
            errors.push(syn::Error::new(
                attrs::name_span(&variant_options, variant),
                format!(
                    "duplicate event type name `{name}`: variant `{first}` already has it; each variant needs its own name, pin a different one with #[event(name = \"...\")]"
                ),
            ));
        } else {
            seen.insert(name.clone(), variant.ident.clone());
        }

        let shape = shape_of(variant, &input.ident, &mut errors);
        variants.push(EventVariant {
            ident: variant.ident.clone(),
            name,
            version: variant_options.version.unwrap_or(1),
            upcast: variant_options.upcast,
            shape,
        });
    }

    errors.finish()?;
    Ok(EventEnum {
        ident: input.ident.clone(),
        krate: options
            .krate
            .unwrap_or_else(|| syn::parse_quote!(::eventsource)),
        variants,
    })
}

/// The error for a derive on a struct or union, spanning `struct Name`.
fn not_an_enum(keyword: &dyn ToTokens, ident: &Ident, what: &str) -> syn::Error {
    syn::Error::new_spanned(
        quote::quote!(#keyword #ident),
        format!("#[derive(DomainEvent)] goes on the enum of a domain's events (one variant per event type), not on {what}"),
    )
}

/// The payload shape of a variant; a tuple variant with other than one field is an error.
fn shape_of(variant: &syn::Variant, enum_ident: &Ident, errors: &mut Errors) -> Shape {
    match &variant.fields {
        Fields::Unit => Shape::Unit { braced: false },
        Fields::Named(named) if named.named.is_empty() => Shape::Unit { braced: true },
        Fields::Named(named) => Shape::Struct {
            fields: named
                .named
                .iter()
                .filter_map(|field| {
                    Some(EventField {
                        ident: field.ident.clone()?,
                        ty: replace_self(&field.ty, enum_ident),
                        serde_attrs: attrs::serde_attrs(&field.attrs),
                    })
                })
                .collect(),
            serde_attrs: attrs::serde_attrs(&variant.attrs),
        },
        Fields::Unnamed(unnamed) if unnamed.unnamed.len() == 1 => {
            let field = &unnamed.unnamed[0];
            Shape::Newtype {
                ty: replace_self(&field.ty, enum_ident),
                serde_attrs: attrs::serde_attrs(&field.attrs),
            }
        }
        Fields::Unnamed(unnamed) => {
            let found = if unnamed.unnamed.is_empty() {
                "none".to_owned()
            } else {
                unnamed.unnamed.len().to_string()
            };
            errors.spanned(
                &variant.fields,
                format!(
                    "a tuple variant of an event enum has exactly one field, the event's data (found {found}); use `{0}(SomeStruct)`, a struct variant `{0} {{ a: A, b: B }}` or a unit variant `{0}`",
                    variant.ident
                ),
            );
            Shape::Unit { braced: false }
        }
    }
}

/// `ty` with every `Self` replaced by the enum's name: the generated helper structs are items of
/// their own, where `Self` would not name the enum.
fn replace_self(ty: &Type, enum_ident: &Ident) -> Type {
    fn walk(tokens: TokenStream, enum_ident: &Ident) -> TokenStream {
        tokens
            .into_iter()
            .map(|tree| match tree {
                TokenTree::Ident(ident) if ident == "Self" => {
                    let mut replaced = enum_ident.clone();
                    replaced.set_span(ident.span());
                    TokenTree::Ident(replaced)
                }
                TokenTree::Group(group) => {
                    let mut new = Group::new(group.delimiter(), walk(group.stream(), enum_ident));
                    new.set_span(group.span());
                    TokenTree::Group(new)
                }
                other => other,
            })
            .collect()
    }
    let replaced = walk(ty.to_token_stream(), enum_ident);
    syn::parse2(replaced).unwrap_or_else(|_| ty.clone())
}
