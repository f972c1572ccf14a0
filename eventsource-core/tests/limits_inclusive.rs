//! Every append limit accepts exactly its value and refuses one more.

use eventsource_core::json_nesting::MAX_READ_DEPTH;
use eventsource_core::{
    EventMetadata, ExpectedVersion, Limits, NewEvent, StreamId, ValidationError,
};
use serde_json::json;

fn stream() -> StreamId {
    StreamId::new("limits", "1").expect("valid id")
}

/// Every limit accepts exactly its value and refuses one more.
#[test]
fn limits_are_inclusive() {
    let metadata = EventMetadata {
        actor: Some("a".repeat(10)),
        ..EventMetadata::default()
    };
    let event = NewEvent::new("E", 1, json!({ "s": "x" }), metadata);
    let metadata_len = serde_json::to_string(&event.metadata).expect("json").len();
    let event_len = event.payload.to_string().len() + metadata_len + event.event_type.len();
    let events = vec![event.clone()];

    let at = Limits::default().with_max_metadata_bytes(metadata_len);
    assert!(at
        .check_append(&stream(), ExpectedVersion::Any, &events)
        .is_ok());
    let under = Limits::default().with_max_metadata_bytes(metadata_len - 1);
    assert!(matches!(
        under.check_append(&stream(), ExpectedVersion::Any, &events),
        Err(ValidationError::MetadataTooLarge { .. })
    ));

    let at = Limits::default().with_max_append_bytes(event_len);
    assert!(at
        .check_append(&stream(), ExpectedVersion::Any, &events)
        .is_ok());
    let under = Limits::default().with_max_append_bytes(event_len - 1);
    assert!(matches!(
        under.check_append(&stream(), ExpectedVersion::Any, &events),
        Err(ValidationError::AppendTooLarge { .. })
    ));

    let two_deep = vec![NewEvent::new(
        "E",
        1,
        json!([[1]]),
        EventMetadata::default(),
    )];
    let at = Limits::default().with_max_json_depth(2);
    assert!(at
        .check_append(&stream(), ExpectedVersion::Any, &two_deep)
        .is_ok());
    assert!(matches!(
        Limits::default().with_max_json_depth(1).check_append(
            &stream(),
            ExpectedVersion::Any,
            &two_deep
        ),
        Err(ValidationError::PayloadTooDeep { limit: 1, .. })
    ));
    let capped = Limits::default().with_max_json_depth(usize::MAX);
    let deep = (0..=MAX_READ_DEPTH).fold(json!(1), |v, _| json!([v]));
    let deep = vec![NewEvent::new("E", 1, deep, EventMetadata::default())];
    assert!(matches!(
        capped.check_append(&stream(), ExpectedVersion::Any, &deep),
        Err(ValidationError::PayloadTooDeep {
            limit: MAX_READ_DEPTH,
            ..
        })
    ));
}
