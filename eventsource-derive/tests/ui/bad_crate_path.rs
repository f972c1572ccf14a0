use eventsource::DomainEvent;

#[derive(DomainEvent)]
#[event(crate = "not a path")]
pub enum OrderEvent {
    Placed,
}

#[derive(DomainEvent)]
#[event(crate = eventsource)]
pub enum OtherEvent {
    Placed,
}

fn main() {}
