//! Behaviour of `#[derive(DomainEvent)]`: names, versions, payload shapes, round trips and every
//! decode error.
#![deny(
    deprecated,
    unused,
    nonstandard_style,
    rust_2018_idioms,
    unused_qualifications
)]

use chrono::{DateTime, TimeZone, Utc};
use eventsource::{DecodeError, DomainEvent, EncodeError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemAdded {
    pub sku: String,
    pub quantity: u32,
}

#[derive(Debug, Clone, PartialEq, DomainEvent)]
pub enum OrderEvent {
    #[event(name = "OrderPlaced")]
    Placed {
        customer: String,
        placed_at: DateTime<Utc>,
    },
    #[event(version = 2)]
    ItemAdded(ItemAdded),
    Confirmed,
    #[event(name = "OrderCancelled", version = 3)]
    Cancelled {
        reason: Option<String>,
    },
    Archived {},
    Noted(String),
}

fn placed() -> OrderEvent {
    OrderEvent::Placed {
        customer: "Zoë".into(),
        placed_at: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
    }
}

fn item_added() -> OrderEvent {
    OrderEvent::ItemAdded(ItemAdded {
        sku: "A-1".into(),
        quantity: 3,
    })
}

fn round_trip<E: DomainEvent + PartialEq + std::fmt::Debug>(event: &E) -> Value {
    let payload = event.encode().expect("encodes");
    let decoded = E::decode(event.event_type(), event.schema_version(), &payload).expect("decodes");
    assert_eq!(&decoded, event);
    payload
}

#[test]
fn event_types_lists_every_name_in_declaration_order() {
    assert_eq!(
        OrderEvent::EVENT_TYPES,
        [
            "OrderPlaced",
            "ItemAdded",
            "Confirmed",
            "OrderCancelled",
            "Archived",
            "Noted"
        ]
    );
}

#[test]
fn type_names_default_to_the_variant_and_follow_pins() {
    assert_eq!(placed().event_type(), "OrderPlaced");
    assert_eq!(item_added().event_type(), "ItemAdded");
    assert_eq!(OrderEvent::Confirmed.event_type(), "Confirmed");
    assert_eq!(
        OrderEvent::Cancelled { reason: None }.event_type(),
        "OrderCancelled"
    );
    assert_eq!(OrderEvent::Archived {}.event_type(), "Archived");
    assert_eq!(OrderEvent::Noted("x".into()).event_type(), "Noted");
}

#[test]
fn schema_versions_default_to_one() {
    assert_eq!(placed().schema_version(), 1);
    assert_eq!(item_added().schema_version(), 2);
    assert_eq!(OrderEvent::Confirmed.schema_version(), 1);
    assert_eq!(OrderEvent::Cancelled { reason: None }.schema_version(), 3);
    assert_eq!(OrderEvent::Archived {}.schema_version(), 1);
}

#[test]
fn struct_variant_payload_is_an_object_of_its_fields() {
    let payload = round_trip(&placed());
    assert_eq!(
        payload,
        json!({ "customer": "Zoë", "placed_at": "2026-01-02T03:04:05Z" })
    );
}

#[test]
fn tuple_variant_payload_is_the_fields_own_serialization() {
    assert_eq!(
        round_trip(&item_added()),
        json!({ "sku": "A-1", "quantity": 3 })
    );
    assert_eq!(
        round_trip(&OrderEvent::Noted("hello".into())),
        json!("hello")
    );
}

#[test]
fn unit_variants_encode_as_an_empty_object() {
    assert_eq!(round_trip(&OrderEvent::Confirmed), json!({}));
    assert_eq!(round_trip(&OrderEvent::Archived {}), json!({}));
}

#[test]
fn unit_variants_decode_from_an_empty_object_or_null() {
    for payload in [json!({}), Value::Null, json!({ "ignored": 1 })] {
        assert_eq!(
            OrderEvent::decode("Confirmed", 1, &payload).unwrap(),
            OrderEvent::Confirmed
        );
        assert_eq!(
            OrderEvent::decode("Archived", 1, &payload).unwrap(),
            OrderEvent::Archived {}
        );
    }
    for payload in [json!(true), json!(1), json!("x"), json!([])] {
        let error = OrderEvent::decode("Confirmed", 1, &payload).unwrap_err();
        match error {
            DecodeError::Payload {
                event_type,
                schema_version,
                source,
            } => {
                assert_eq!(event_type, "Confirmed");
                assert_eq!(schema_version, 1);
                assert!(
                    source.to_string().contains("an empty object `{}` or null"),
                    "{source}"
                );
            }
            other => panic!("expected a payload error for {payload}, got {other:?}"),
        }
    }
}

#[test]
fn options_encode_as_null_and_decode_when_missing() {
    assert_eq!(
        round_trip(&OrderEvent::Cancelled { reason: None }),
        json!({ "reason": null })
    );
    assert_eq!(
        round_trip(&OrderEvent::Cancelled {
            reason: Some("late".into())
        }),
        json!({ "reason": "late" })
    );
    assert_eq!(
        OrderEvent::decode("OrderCancelled", 3, &json!({})).unwrap(),
        OrderEvent::Cancelled { reason: None }
    );
}

#[test]
fn unknown_type_is_refused() {
    match OrderEvent::decode("Placed", 1, &json!({})) {
        Err(DecodeError::UnknownType { event_type }) => assert_eq!(event_type, "Placed"),
        other => panic!("expected UnknownType, got {other:?}"),
    }
    assert!(matches!(
        OrderEvent::decode("", 1, &json!({})),
        Err(DecodeError::UnknownType { .. })
    ));
}

#[test]
fn other_schema_versions_are_refused() {
    let payload = item_added().encode().unwrap();
    for version in [0, 1, 3, u32::MAX] {
        match OrderEvent::decode("ItemAdded", version, &payload) {
            Err(DecodeError::UnsupportedVersion {
                event_type,
                schema_version,
                supported,
            }) => {
                assert_eq!(event_type, "ItemAdded");
                assert_eq!(schema_version, version);
                assert_eq!(supported, 2);
            }
            other => panic!("expected UnsupportedVersion for {version}, got {other:?}"),
        }
    }
    assert!(matches!(
        OrderEvent::decode("Confirmed", 2, &json!({})),
        Err(DecodeError::UnsupportedVersion { supported: 1, .. })
    ));
}

#[test]
fn mismatched_payloads_are_payload_errors() {
    let cases = [
        ("OrderPlaced", 1, json!({ "customer": "x" })),
        (
            "OrderPlaced",
            1,
            json!({ "customer": 1, "placed_at": "2026-01-02T03:04:05Z" }),
        ),
        ("OrderPlaced", 1, json!("not an object")),
        ("ItemAdded", 2, json!({ "sku": "A", "quantity": -1 })),
        ("ItemAdded", 2, Value::Null),
        ("OrderCancelled", 3, json!({ "reason": 5 })),
        ("Noted", 1, json!({})),
    ];
    for (name, version, payload) in cases {
        match OrderEvent::decode(name, version, &payload) {
            Err(DecodeError::Payload {
                event_type,
                schema_version,
                ..
            }) => {
                assert_eq!(event_type, name);
                assert_eq!(schema_version, version);
            }
            other => panic!("expected a payload error for {name} {payload}, got {other:?}"),
        }
    }
}

#[test]
fn payload_errors_name_the_missing_field() {
    let error = OrderEvent::decode("OrderPlaced", 1, &json!({ "customer": "x" })).unwrap_err();
    assert!(error.to_string().contains("placed_at"), "{error}");
    assert!(error.to_string().contains("OrderPlaced"), "{error}");
}

// ---- serde attributes carried over to the payload structs ----

mod unix_seconds {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn default_priority() -> u8 {
    5
}

#[derive(Debug, Clone, PartialEq, DomainEvent)]
pub enum TicketEvent {
    #[serde(rename_all = "camelCase")]
    Opened {
        #[serde(rename = "ticket")]
        ticket_id: u64,
        opened_by: String,
        #[serde(default = "default_priority")]
        priority: u8,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        labels: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        #[serde(with = "unix_seconds")]
        at: u64,
    },
    Stamped(#[serde(with = "unix_seconds")] u64),
    #[serde(deny_unknown_fields)]
    Closed {
        r#type: String,
    },
}

#[test]
fn field_serde_attributes_apply_to_the_payload() {
    let event = TicketEvent::Opened {
        ticket_id: 7,
        opened_by: "ana".into(),
        priority: 1,
        labels: vec![],
        note: None,
        at: 42,
    };
    let payload = round_trip(&event);
    assert_eq!(
        payload,
        json!({ "ticket": 7, "openedBy": "ana", "priority": 1, "at": "42" })
    );
    let decoded = TicketEvent::decode(
        "Opened",
        1,
        &json!({ "ticket": 7, "openedBy": "ana", "at": "9" }),
    )
    .unwrap();
    assert_eq!(
        decoded,
        TicketEvent::Opened {
            ticket_id: 7,
            opened_by: "ana".into(),
            priority: 5,
            labels: vec![],
            note: None,
            at: 9,
        }
    );
}

#[test]
fn tuple_field_serde_attributes_apply_to_the_payload() {
    assert_eq!(round_trip(&TicketEvent::Stamped(12)), json!("12"));
    assert!(matches!(
        TicketEvent::decode("Stamped", 1, &json!(12)),
        Err(DecodeError::Payload { .. })
    ));
}

#[test]
fn variant_serde_attributes_apply_to_the_payload_struct() {
    let event = TicketEvent::Closed {
        r#type: "done".into(),
    };
    assert_eq!(round_trip(&event), json!({ "type": "done" }));
    assert!(matches!(
        TicketEvent::decode("Closed", 1, &json!({ "type": "done", "extra": 1 })),
        Err(DecodeError::Payload { .. })
    ));
}

#[test]
fn raw_identifier_fields_use_their_plain_names() {
    assert_eq!(
        TicketEvent::decode("Closed", 1, &json!({ "type": "x" })).unwrap(),
        TicketEvent::Closed { r#type: "x".into() }
    );
}

// ---- alongside serde's own derive, and `Self` in field types ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
pub enum TreeEvent {
    #[serde(rename = "leaf")]
    Leaf(u32),
    #[serde(rename = "node")]
    Node {
        #[serde(default)]
        children: Vec<Self>,
    },
}

#[test]
fn works_next_to_serdes_derive_and_resolves_self() {
    let event = TreeEvent::Node {
        children: vec![TreeEvent::Leaf(1), TreeEvent::Node { children: vec![] }],
    };
    assert_eq!(event.event_type(), "Node");
    assert_eq!(
        round_trip(&event),
        json!({ "children": [{ "leaf": 1 }, { "node": { "children": [] } }] })
    );
    assert_eq!(
        TreeEvent::decode("Node", 1, &json!({})).unwrap(),
        TreeEvent::Node { children: vec![] }
    );
}

// ---- explicit discriminants ----

#[derive(Debug, Clone, Copy, PartialEq, Eq, DomainEvent)]
#[repr(u8)]
pub enum LightEvent {
    On = 1,
    #[event(name = "LightOff")]
    Off = 7,
}

#[test]
fn explicit_discriminants_are_fine() {
    assert_eq!(LightEvent::EVENT_TYPES, ["On", "LightOff"]);
    assert_eq!(LightEvent::Off as u8, 7);
    assert_eq!(round_trip(&LightEvent::Off), json!({}));
    assert_eq!(
        LightEvent::decode("LightOff", 1, &Value::Null).unwrap(),
        LightEvent::Off
    );
}

// ---- encode errors ----

#[derive(Debug, Clone, PartialEq, DomainEvent)]
pub enum IndexEvent {
    Built {
        counts: std::collections::BTreeMap<Vec<u8>, u32>,
    },
}

#[test]
fn unserializable_payloads_are_encode_errors() {
    let event = IndexEvent::Built {
        counts: [(vec![1u8], 1)].into_iter().collect(),
    };
    let error = event.encode().unwrap_err();
    assert!(
        matches!(
            error,
            EncodeError::Json {
                event_type: "Built",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("Built"), "{error}");
}

// ---- the crate path override ----

mod facade {
    pub use eventsource::{DecodeError, DomainEvent, EncodeError};

    pub mod __private {
        pub use serde;
        pub use serde_json;
    }
}

mod elsewhere {
    use crate::facade::DomainEvent as _;

    #[derive(Debug, PartialEq, eventsource::DomainEvent)]
    #[event(crate = "crate::facade")]
    pub enum Moved {
        To {
            x: i64,
            y: i64,
        },
        #[event(name = "Stopped", version = 4)]
        Halted,
    }

    #[test]
    fn the_crate_path_can_be_overridden() {
        let event = Moved::To { x: -1, y: 2 };
        assert_eq!(
            event.encode().unwrap(),
            serde_json::json!({ "x": -1, "y": 2 })
        );
        assert_eq!(
            Moved::decode("Stopped", 4, &serde_json::json!({})).unwrap(),
            Moved::Halted
        );
        assert_eq!(
            <Moved as crate::facade::DomainEvent>::EVENT_TYPES,
            ["To", "Stopped"]
        );
    }
}

// ---- field names that the generated code also uses, deprecated variants ----

#[derive(Debug, Clone, PartialEq, DomainEvent)]
pub enum TrickyEvent {
    Named {
        payload: String,
        event_type: u8,
        schema_version: u16,
        source: bool,
        r#match: (),
    },
    #[deprecated = "kept to decode old events"]
    #[event(name = "Old")]
    Old(String),
}

#[test]
fn field_names_do_not_clash_with_the_generated_code() {
    let event = TrickyEvent::Named {
        payload: "p".into(),
        event_type: 1,
        schema_version: 2,
        source: true,
        r#match: (),
    };
    assert_eq!(
        round_trip(&event),
        json!({ "payload": "p", "event_type": 1, "schema_version": 2, "source": true, "match": null })
    );
}

#[test]
#[allow(deprecated)]
fn deprecated_variants_still_round_trip() {
    assert_eq!(round_trip(&TrickyEvent::Old("x".into())), json!("x"));
}

/// Version 1 of `Renamed` had `old`; version 2 of it had `middle`; version 3 has `new`.
fn upcast_renamed(version: u32, payload: Value) -> Result<Value, String> {
    let field = match version {
        1 => "old",
        2 => "middle",
        other => return Err(format!("no upcast from version {other}")),
    };
    let value = payload
        .get(field)
        .cloned()
        .ok_or_else(|| format!("version {version} payload without `{field}`"))?;
    Ok(json!({ "new": value }))
}

#[derive(Debug, Clone, PartialEq, DomainEvent)]
pub enum EvolvedEvent {
    #[event(version = 3, upcast = "upcast_renamed")]
    Renamed { new: String },
    #[event(version = 2)]
    Plain { n: u32 },
}

#[test]
fn upcasters_turn_older_versions_into_the_current_one() {
    let current = EvolvedEvent::Renamed { new: "x".into() };
    assert_eq!(current.schema_version(), 3);
    assert_eq!(round_trip(&current), json!({ "new": "x" }));
    for (version, payload) in [(1, json!({ "old": "x" })), (2, json!({ "middle": "x" }))] {
        assert_eq!(
            EvolvedEvent::decode("Renamed", version, &payload).expect("upcast"),
            current,
            "from version {version}"
        );
    }
}

#[test]
fn upcaster_failures_and_newer_versions_are_typed_errors() {
    match EvolvedEvent::decode("Renamed", 1, &json!({ "middle": "x" })) {
        Err(DecodeError::Upcast {
            event_type,
            schema_version: 1,
            target: 3,
            reason,
        }) => {
            assert_eq!(event_type, "Renamed");
            assert!(reason.contains("without `old`"), "{reason}");
        }
        other => panic!("an upcast error, got {other:?}"),
    }
    // An upcasted payload that does not match the fields is a payload error of the stored version.
    assert!(matches!(
        EvolvedEvent::decode("Renamed", 2, &json!({ "middle": 7 })),
        Err(DecodeError::Payload {
            schema_version: 2,
            ..
        })
    ));
    // Versions newer than the code's, and versions of variants without an upcaster.
    assert!(matches!(
        EvolvedEvent::decode("Renamed", 4, &json!({ "new": "x" })),
        Err(DecodeError::UnsupportedVersion {
            schema_version: 4,
            supported: 3,
            ..
        })
    ));
    assert!(matches!(
        EvolvedEvent::decode("Renamed", 0, &json!({ "new": "x" })),
        Err(DecodeError::UnsupportedVersion {
            schema_version: 0,
            ..
        })
    ));
    assert!(matches!(
        EvolvedEvent::decode("Plain", 1, &json!({ "n": 1 })),
        Err(DecodeError::UnsupportedVersion {
            schema_version: 1,
            supported: 2,
            ..
        })
    ));
}
