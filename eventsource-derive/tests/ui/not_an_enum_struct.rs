use eventsource::DomainEvent;

#[derive(DomainEvent)]
pub struct Placed {
    pub customer: String,
}

fn main() {}
