//! The in-memory store fills a batch's byte budget exactly: events are taken while their
//! payload and metadata bytes stay within it, the budget included.

use eventsource_core::{
    BatchSize, EventAppender, EventMetadata, ExpectedVersion, FeedFilter, FeedPosition, FeedReader,
    InMemoryStore, NewEvent, StreamId,
};
use serde_json::json;

#[tokio::test]
async fn a_batch_fills_its_byte_budget_exactly() {
    let store = InMemoryStore::new();
    let stream = StreamId::new("bytes", "1").expect("valid id");
    let event = || NewEvent::new("E", 1, json!("xxxx"), EventMetadata::default());
    // What the store counts per event: its payload and metadata as JSON text.
    let one = event().payload.to_string().len()
        + serde_json::to_string(&event().metadata)
            .expect("metadata")
            .len();
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            (0..3).map(|_| event()).collect(),
        )
        .await
        .expect("append");
    let filter = FeedFilter::all();
    let read = |bytes| {
        store.read_feed_batch(
            FeedPosition::START,
            BatchSize::events(10).with_bytes(bytes),
            &filter,
        )
    };
    let exact = read(2 * one).await.expect("read");
    assert_eq!((exact.events.len(), exact.reached_head), (2, false));
    let short = read(2 * one - 1).await.expect("read");
    assert_eq!((short.events.len(), short.reached_head), (1, false));
    let all = read(3 * one).await.expect("read");
    assert_eq!((all.events.len(), all.reached_head), (3, true));
}
