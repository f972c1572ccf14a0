//! Code generation: `impl DomainEvent for TheEnum` plus the hidden payload helpers.
//!
//! Everything goes inside `const _: () = { ... };`, so the helpers are invisible to the user's
//! crate. The generated code names `serde` and `serde_json` only through `<crate>::__private`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::ext::IdentExt;
use syn::LitStr;

use crate::model::{EventEnum, EventVariant, Shape};

/// The paths generated code uses.
struct Paths {
    /// The crate path (`::eventsource` unless overridden).
    krate: TokenStream,
    /// `<crate>::__private::serde`.
    serde: TokenStream,
    /// `<crate>::__private::serde_json`.
    json: TokenStream,
    /// `"<crate>::__private::serde"`, for `#[serde(crate = ...)]`.
    serde_str: LitStr,
}

/// The generated code for a checked enum.
pub(crate) fn expand(model: &EventEnum) -> TokenStream {
    let krate = &model.krate;
    let serde = quote!(#krate::__private::serde);
    let paths = Paths {
        krate: quote!(#krate),
        json: quote!(#krate::__private::serde_json),
        serde_str: LitStr::new(&serde.to_string(), proc_macro2::Span::call_site()),
        serde,
    };
    let Paths { krate, json, .. } = &paths;

    let ident = &model.ident;
    let names: Vec<&str> = model.variants.iter().map(|v| v.name.as_str()).collect();
    let versions: Vec<u32> = model.variants.iter().map(|v| v.version).collect();
    let patterns: Vec<TokenStream> = model.variants.iter().map(pattern).collect();

    let helpers: Vec<TokenStream> = model.variants.iter().map(|v| helpers(v, &paths)).collect();
    let encode_arms: Vec<TokenStream> = model
        .variants
        .iter()
        .map(|v| encode_arm(v, &paths))
        .collect();
    let decode_exprs: Vec<TokenStream> = model
        .variants
        .iter()
        .map(|v| decode_expr(v, &paths))
        .collect();
    let version_gates: Vec<TokenStream> = model
        .variants
        .iter()
        .map(|v| version_gate(v, &paths))
        .collect();
    let unit_helper = model
        .variants
        .iter()
        .any(|v| matches!(v.shape, Shape::Unit { .. }))
        .then(|| unit_payload_helper(&paths));

    quote! {
        #[allow(deprecated, non_camel_case_types, non_snake_case, unused_qualifications)]
        const _: () = {
            #unit_helper
            #(#helpers)*

            #[automatically_derived]
            impl #krate::DomainEvent for #ident {
                const EVENT_TYPES: &'static [&'static str] = &[#(#names),*];

                #[inline]
                fn event_type(&self) -> &'static str {
                    match self {
                        #(#patterns => #names,)*
                    }
                }

                #[inline]
                fn schema_version(&self) -> u32 {
                    match self {
                        #(#patterns => #versions,)*
                    }
                }

                fn encode(
                    &self,
                ) -> ::core::result::Result<#json::Value, #krate::EncodeError> {
                    let __eventsource_encoded: ::core::result::Result<#json::Value, #json::Error> =
                        match self {
                            #(#encode_arms)*
                        };
                    __eventsource_encoded.map_err(|__eventsource_source| #krate::EncodeError::Json {
                        event_type: <Self as #krate::DomainEvent>::event_type(self),
                        source: __eventsource_source,
                    })
                }

                fn decode(
                    event_type: &str,
                    schema_version: u32,
                    payload: &#json::Value,
                ) -> ::core::result::Result<Self, #krate::DecodeError> {
                    let __eventsource_decoded: ::core::result::Result<Self, #json::Error> =
                        match event_type {
                            #(
                                #names => {
                                    #version_gates
                                    #decode_exprs
                                }
                            )*
                            _ => {
                                return ::core::result::Result::Err(
                                    #krate::DecodeError::UnknownType {
                                        event_type: ::std::borrow::ToOwned::to_owned(event_type),
                                    },
                                );
                            }
                        };
                    __eventsource_decoded.map_err(|__eventsource_source| #krate::DecodeError::Payload {
                        event_type: ::std::borrow::ToOwned::to_owned(event_type),
                        schema_version,
                        source: __eventsource_source,
                    })
                }
            }

        };
    }
}

/// A pattern matching any value of the variant.
fn pattern(variant: &EventVariant) -> TokenStream {
    let v = &variant.ident;
    match &variant.shape {
        Shape::Unit { braced: false } => quote!(Self::#v),
        Shape::Unit { braced: true } | Shape::Struct { .. } => quote!(Self::#v { .. }),
        Shape::Newtype { .. } => quote!(Self::#v(..)),
    }
}

/// The name of a generated helper struct for a variant.
fn helper_ident(kind: &str, variant: &EventVariant) -> syn::Ident {
    format_ident!("__Eventsource{}{}", kind, variant.ident.unraw())
}

/// The hidden helper structs of a variant: one that borrows the fields (encoding) and one that
/// owns them (decoding), both deriving serde with the user's `#[serde(...)]` attributes.
fn helpers(variant: &EventVariant, paths: &Paths) -> TokenStream {
    let Paths {
        serde, serde_str, ..
    } = paths;
    let encode = helper_ident("Encode", variant);
    let decode = helper_ident("Decode", variant);
    match &variant.shape {
        Shape::Unit { .. } => TokenStream::new(),
        Shape::Newtype { serde_attrs, .. } if serde_attrs.is_empty() => TokenStream::new(),
        Shape::Newtype { ty, serde_attrs } => quote! {
            #[derive(#serde::Serialize)]
            #[serde(crate = #serde_str)]
            struct #encode<'__eventsource>(#(#serde_attrs)* &'__eventsource #ty);

            #[derive(#serde::Deserialize)]
            #[serde(crate = #serde_str)]
            struct #decode(#(#serde_attrs)* #ty);
        },
        Shape::Struct {
            fields,
            serde_attrs,
        } => {
            let idents: Vec<_> = fields.iter().map(|f| &f.ident).collect();
            let types: Vec<_> = fields.iter().map(|f| &f.ty).collect();
            let attrs: Vec<_> = fields
                .iter()
                .map(|f| {
                    let attrs = &f.serde_attrs;
                    quote!(#(#attrs)*)
                })
                .collect();
            quote! {
                #[derive(#serde::Serialize)]
                #[serde(crate = #serde_str)]
                #(#serde_attrs)*
                struct #encode<'__eventsource> {
                    #(#attrs #idents: &'__eventsource #types,)*
                }

                #[derive(#serde::Deserialize)]
                #[serde(crate = #serde_str)]
                #(#serde_attrs)*
                struct #decode {
                    #(#attrs #idents: #types,)*
                }
            }
        }
    }
}

/// The `match self` arm of `encode` for a variant, evaluating to
/// `Result<serde_json::Value, serde_json::Error>`.
fn encode_arm(variant: &EventVariant, paths: &Paths) -> TokenStream {
    let Paths { json, .. } = paths;
    let v = &variant.ident;
    let encode = helper_ident("Encode", variant);
    match &variant.shape {
        Shape::Unit { .. } => {
            let pattern = pattern(variant);
            quote! {
                #pattern => ::core::result::Result::Ok(#json::Value::Object(#json::Map::new())),
            }
        }
        Shape::Newtype { serde_attrs, .. } if serde_attrs.is_empty() => quote! {
            Self::#v(__eventsource_data) => #json::to_value(__eventsource_data),
        },
        Shape::Newtype { .. } => quote! {
            Self::#v(__eventsource_data) => #json::to_value(#encode(__eventsource_data)),
        },
        Shape::Struct { fields, .. } => {
            let idents: Vec<_> = fields.iter().map(|f| &f.ident).collect();
            quote! {
                Self::#v { #(#idents),* } => #json::to_value(#encode { #(#idents),* }),
            }
        }
    }
}

/// The check of the stored schema version for a variant whose name matched: the variant's own
/// version decodes as it is; an older one goes through the variant's upcaster, if it has one,
/// and `payload` is rebound to the upcasted payload; any other is an unsupported version.
fn version_gate(variant: &EventVariant, paths: &Paths) -> TokenStream {
    let Paths { krate, json, .. } = paths;
    let version = variant.version;
    let unsupported = quote! {
        return ::core::result::Result::Err(#krate::DecodeError::UnsupportedVersion {
            event_type: ::std::borrow::ToOwned::to_owned(event_type),
            schema_version,
            supported: #version,
        })
    };
    let Some(upcast) = &variant.upcast else {
        return quote! {
            if schema_version != #version {
                #unsupported;
            }
        };
    };
    quote! {
        let __eventsource_upcasted: #json::Value;
        let payload: &#json::Value = if schema_version == #version {
            payload
        } else if (1..#version).contains(&schema_version) {
            match #upcast(schema_version, ::core::clone::Clone::clone(payload)) {
                ::core::result::Result::Ok(__eventsource_value) => {
                    __eventsource_upcasted = __eventsource_value;
                    &__eventsource_upcasted
                }
                ::core::result::Result::Err(__eventsource_error) => {
                    return ::core::result::Result::Err(#krate::DecodeError::Upcast {
                        event_type: ::std::borrow::ToOwned::to_owned(event_type),
                        schema_version,
                        target: #version,
                        reason: ::std::string::ToString::to_string(&__eventsource_error),
                    });
                }
            }
        } else {
            #unsupported
        };
    }
}

/// The body of `decode` for a variant whose name and version matched, evaluating to
/// `Result<Self, serde_json::Error>`.
fn decode_expr(variant: &EventVariant, paths: &Paths) -> TokenStream {
    let Paths { serde, .. } = paths;
    let v = &variant.ident;
    let decode = helper_ident("Decode", variant);
    match &variant.shape {
        Shape::Unit { braced } => {
            let value = if *braced {
                quote!(Self::#v {})
            } else {
                quote!(Self::#v)
            };
            quote! {
                __eventsource_unit_payload(payload).map(|()| #value)
            }
        }
        Shape::Newtype { ty, serde_attrs } if serde_attrs.is_empty() => quote! {
            <#ty as #serde::Deserialize>::deserialize(payload).map(Self::#v)
        },
        Shape::Newtype { .. } => quote! {
            <#decode as #serde::Deserialize>::deserialize(payload)
                .map(|__eventsource_data| Self::#v(__eventsource_data.0))
        },
        Shape::Struct { fields, .. } => {
            let idents: Vec<_> = fields.iter().map(|f| &f.ident).collect();
            quote! {
                <#decode as #serde::Deserialize>::deserialize(payload)
                    .map(|__eventsource_data| Self::#v { #(#idents: __eventsource_data.#idents),* })
            }
        }
    }
}

/// The check of a unit variant's payload: `{}` or `null` (an object's fields are ignored, as
/// serde ignores unknown fields of a struct); anything else is a payload error.
fn unit_payload_helper(paths: &Paths) -> TokenStream {
    let Paths { serde, json, .. } = paths;
    quote! {
        fn __eventsource_unit_payload(
            payload: &#json::Value,
        ) -> ::core::result::Result<(), #json::Error> {
            let unexpected = match payload {
                #json::Value::Null | #json::Value::Object(_) => {
                    return ::core::result::Result::Ok(());
                }
                #json::Value::Bool(b) => #serde::de::Unexpected::Bool(*b),
                #json::Value::Number(_) => #serde::de::Unexpected::Other("number"),
                #json::Value::String(s) => #serde::de::Unexpected::Str(s),
                #json::Value::Array(_) => #serde::de::Unexpected::Seq,
            };
            ::core::result::Result::Err(<#json::Error as #serde::de::Error>::invalid_type(
                unexpected,
                &"an empty object `{}` or null (the event has no data)",
            ))
        }
    }
}
