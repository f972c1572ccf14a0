//! NATS JetStream for eventsource: a relay that publishes the feed with PubAck and Nats-Msg-Id deduplication, and an inbox over a durable consumer.
