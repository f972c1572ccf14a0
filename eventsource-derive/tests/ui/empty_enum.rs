use eventsource::DomainEvent;

#[derive(DomainEvent)]
pub enum NoEvents {}

fn main() {}
