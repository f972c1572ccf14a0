use eventsource::DomainEvent;

fn upcast(_version: u32, payload: serde_json::Value) -> Result<serde_json::Value, String> {
    Ok(payload)
}

#[derive(DomainEvent)]
#[event(upcast = "upcast")]
pub enum OrderEvent {
    // Version 1 has nothing older to upcast.
    #[event(upcast = "upcast")]
    Placed,
    #[event(version = 2, upcast = "not a path")]
    Shipped,
    #[event(version = 3, upcast = upcast)]
    Delivered,
    #[event(version = 4, upcast = "upcast", upcast = "upcast")]
    Returned,
}

fn main() {}
