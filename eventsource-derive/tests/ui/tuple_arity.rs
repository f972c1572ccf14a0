use eventsource::DomainEvent;

#[derive(DomainEvent)]
pub enum OrderEvent {
    Nothing(),
    Pair(String, u32),
    Fine(String),
}

fn main() {}
