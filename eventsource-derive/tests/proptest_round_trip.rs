//! Property tests: every generated event survives encode -> decode, both as a `serde_json::Value`
//! and through JSON text (as a store keeps it).

use std::collections::BTreeMap;

use eventsource::{DecodeError, DomainEvent};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub sku: String,
    pub quantity: u32,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, DomainEvent)]
pub enum Event {
    #[event(name = "Registered", version = 3)]
    Struct {
        name: String,
        count: u64,
        delta: i64,
        nickname: Option<String>,
        scores: Vec<i32>,
        attributes: BTreeMap<String, Option<bool>>,
        #[serde(rename = "line")]
        lines: Vec<Line>,
    },
    Measured {
        value: f64,
        values: Vec<f32>,
    },
    Tuple(Line),
    Text(String),
    Maybe(Option<i16>),
    Unit,
}

fn line() -> impl Strategy<Value = Line> {
    (
        any::<String>(),
        any::<u32>(),
        prop::collection::vec(any::<String>(), 0..4),
    )
        .prop_map(|(sku, quantity, tags)| Line {
            sku,
            quantity,
            tags,
        })
}

/// Events whose payloads hold no floating-point numbers (they survive JSON text exactly).
fn exact_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (
            any::<String>(),
            any::<u64>(),
            any::<i64>(),
            proptest::option::of("\\PC*"),
            prop::collection::vec(any::<i32>(), 0..8),
            prop::collection::btree_map(any::<String>(), proptest::option::of(any::<bool>()), 0..4),
            prop::collection::vec(line(), 0..3),
        )
            .prop_map(
                |(name, count, delta, nickname, scores, attributes, lines)| Event::Struct {
                    name,
                    count,
                    delta,
                    nickname,
                    scores,
                    attributes,
                    lines,
                }
            ),
        line().prop_map(Event::Tuple),
        any::<String>().prop_map(Event::Text),
        proptest::option::of(any::<i16>()).prop_map(Event::Maybe),
        Just(Event::Unit),
    ]
}

fn any_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        exact_event(),
        (
            -1e300..1e300f64,
            prop::collection::vec(-1e30f32..1e30f32, 0..4)
        )
            .prop_map(|(value, values)| Event::Measured { value, values }),
    ]
}

proptest! {
    #[test]
    fn encode_then_decode_gives_the_event_back(event in any_event()) {
        let payload = event.encode().expect("encodes");
        let decoded = Event::decode(event.event_type(), event.schema_version(), &payload);
        prop_assert_eq!(decoded.expect("decodes"), event);
    }

    #[test]
    fn payloads_survive_json_text(event in exact_event()) {
        let text = event.encode().expect("encodes").to_string();
        let payload: Value = serde_json::from_str(&text).expect("parses");
        let decoded = Event::decode(event.event_type(), event.schema_version(), &payload);
        prop_assert_eq!(decoded.expect("decodes"), event);
    }

    #[test]
    fn the_name_and_version_are_listed_and_required(event in any_event()) {
        prop_assert!(Event::EVENT_TYPES.contains(&event.event_type()));
        let payload = event.encode().expect("encodes");
        let wrong = event.schema_version() + 1;
        let is_unsupported = matches!(
            Event::decode(event.event_type(), wrong, &payload),
            Err(DecodeError::UnsupportedVersion { supported, .. }) if supported == event.schema_version()
        );
        prop_assert!(is_unsupported);
    }

    #[test]
    fn decoding_arbitrary_input_never_panics(
        name in prop::sample::select(vec!["Registered", "Measured", "Tuple", "Text", "Maybe", "Unit", "Nope"]),
        version in 0u32..5,
        payload in json_value(),
    ) {
        match Event::decode(name, version, &payload) {
            Ok(event) => {
                prop_assert_eq!(event.event_type(), name);
                prop_assert_eq!(event.schema_version(), version);
            }
            Err(DecodeError::UnknownType { event_type }) => prop_assert_eq!(event_type, "Nope"),
            Err(DecodeError::UnsupportedVersion { schema_version, .. }) => {
                prop_assert_eq!(schema_version, version);
            }
            Err(DecodeError::Payload { event_type, .. }) => prop_assert_eq!(event_type, name),
            Err(error @ DecodeError::Upcast { .. }) => {
                prop_assert!(false, "no variant here has an upcaster: {}", error);
            }
        }
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec!["name", "sku", "quantity", "tags", "value", "x"])
                    .prop_map(str::to_owned),
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
