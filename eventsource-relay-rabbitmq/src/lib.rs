//! RabbitMQ for eventsource: a relay that publishes the feed to a topic exchange with publisher confirms, and an inbox that consumes a queue exactly once in effect.
