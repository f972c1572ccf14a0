//! Kafka for eventsource: a relay that publishes the feed with an idempotent producer (acks=all), a topic per category keyed by stream, and an inbox over a consumer group.
