//! Derive macros for the event enums of `eventsource`, the event-sourcing framework for PostgreSQL.
//!
//! Use them through the `eventsource` crate (feature `derive`, on by default), which re-exports
//! [`DomainEvent`](derive@DomainEvent) next to the trait of the same name, the way serde does:
//! `use eventsource::DomainEvent;` brings in both.
#![deny(missing_docs)]

mod attrs;
mod expand;
mod model;

use proc_macro::TokenStream;

/// Implements `eventsource::DomainEvent` for a domain's event enum: one variant per event type,
/// each with a stable stored type name and a schema version.
///
/// ```
/// use eventsource::DomainEvent;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// pub struct ItemAdded {
///     pub sku: String,
///     pub quantity: u32,
/// }
///
/// #[derive(Debug, Clone, PartialEq, DomainEvent)]
/// pub enum OrderEvent {
///     /// Struct variant: the payload is an object of its fields.
///     #[event(name = "OrderPlaced")]
///     Placed {
///         customer: String,
///         placed_at: chrono::DateTime<chrono::Utc>,
///     },
///     /// Single-field tuple variant: the payload is the field's own serialization.
///     #[event(version = 2)]
///     ItemAdded(ItemAdded),
///     /// Unit variant: the payload is `{}`.
///     Confirmed,
/// }
///
/// assert_eq!(OrderEvent::EVENT_TYPES, ["OrderPlaced", "ItemAdded", "Confirmed"]);
///
/// let event = OrderEvent::ItemAdded(ItemAdded { sku: "A-1".into(), quantity: 3 });
/// assert_eq!(event.event_type(), "ItemAdded");
/// assert_eq!(event.schema_version(), 2);
/// let payload = event.encode()?;
/// assert_eq!(payload, serde_json::json!({ "sku": "A-1", "quantity": 3 }));
/// assert_eq!(OrderEvent::decode("ItemAdded", 2, &payload)?, event);
///
/// assert_eq!(OrderEvent::Confirmed.encode()?, serde_json::json!({}));
/// assert!(matches!(
///     OrderEvent::decode("ItemAdded", 1, &payload),
///     Err(eventsource::DecodeError::UnsupportedVersion { supported: 2, .. })
/// ));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # What is generated
///
/// - `EVENT_TYPES`: every type name, in declaration order;
/// - `event_type()` and `schema_version()` of each variant;
/// - `encode()`: the payload is the event's own data, with no enum tag around it (type and
///   version are stored in their own columns):
///   - a struct variant `Placed { customer, placed_at }` encodes as
///     `{"customer": ..., "placed_at": ...}`;
///   - a tuple variant with one field `ItemAdded(ItemAdded)` encodes as that field does;
///   - a unit variant `Confirmed` (or `Confirmed {}`) encodes as `{}`;
/// - `decode()`: an unknown type name is `DecodeError::UnknownType`, a schema version other
///   than the variant's is `DecodeError::UnsupportedVersion` (unless the variant has an
///   upcaster for older versions, see below), a payload that does not match is
///   `DecodeError::Payload`. Decoding reads the
///   `&serde_json::Value` in place and never panics. A unit variant accepts `{}` or `null`
///   (and, like any serde struct, ignores fields of an object it does not know).
///
/// # Attributes
///
/// On a variant, `#[event(...)]` takes (in one attribute or several):
/// - `name = "OrderPlaced"`: the stored type name. It defaults to the variant's name; pin it so
///   that renaming the variant does not orphan stored events. It must be non-empty, without
///   leading or trailing whitespace or NUL, and unique within the enum.
/// - `version = 2`: the schema version of the payload, an integer in `1..=2147483647`
///   (default 1).
/// - `upcast = "path::to::function"`: how payloads stored under an older version (`1..N`)
///   become this version's, so events stored before a change of shape stay readable without
///   rewriting them. The function takes the stored version and payload and returns the payload
///   of version `N`, or an error (any `Display` type) reported as `DecodeError::Upcast`:
///
/// ```
/// use eventsource::DomainEvent;
/// use serde_json::{json, Value};
///
/// /// Version 1 had no currency: it was always euros.
/// fn price_set_v1(_version: u32, mut payload: Value) -> Result<Value, String> {
///     payload
///         .as_object_mut()
///         .ok_or("a PriceSet payload is an object")?
///         .insert("currency".into(), json!("EUR"));
///     Ok(payload)
/// }
///
/// #[derive(Debug, PartialEq, DomainEvent)]
/// enum CatalogEvent {
///     #[event(version = 2, upcast = "price_set_v1")]
///     PriceSet { cents: u64, currency: String },
/// }
///
/// let old = CatalogEvent::decode("PriceSet", 1, &json!({ "cents": 250 }))?;
/// assert_eq!(old, CatalogEvent::PriceSet { cents: 250, currency: "EUR".into() });
/// # Ok::<(), eventsource::DecodeError>(())
/// ```
///
/// On the enum, `#[event(crate = "path")]` changes where the generated code finds the
/// framework (default `::eventsource`). The path must expose `DomainEvent`, `EncodeError`,
/// `DecodeError` and `__private::{serde, serde_json}`; the `eventsource` crate does, so the
/// override is for crates that re-export it under another name.
///
/// `#[serde(...)]` attributes are carried over to the generated payload structs: on the fields
/// of a struct variant (`rename`, `default`, `with`, `skip_serializing_if`, ...), on the field
/// of a one-field tuple variant, and on a struct variant itself as container attributes of its
/// payload (`rename_all`, `deny_unknown_fields`, ...). The user's crate needs no serde
/// dependency for the generated code; field types must implement `Serialize` and
/// `Deserialize`.
///
/// # Refused at compile time
///
/// Structs and unions, enums without variants, generic enums, two variants with the same type
/// name (also after `name = ...`), tuple variants with no field or several fields (wrap them in
/// a struct), unknown or repeated keys, malformed values (`#[event(name)]`, `version = "2"`,
/// `version = 0`, `name = ""`, `upcast = "not a path"`), and an `upcast` on a variant of
/// version 1 (there is nothing older), each reported at its own span; an upcaster of the wrong
/// signature fails to type-check at its call.
#[proc_macro_derive(DomainEvent, attributes(event, serde))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    match model::parse(&input) {
        Ok(model) => expand::expand(&model).into(),
        Err(error) => error.to_compile_error().into(),
    }
}
