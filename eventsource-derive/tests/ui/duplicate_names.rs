use eventsource::DomainEvent;

#[derive(DomainEvent)]
pub enum OrderEvent {
    Placed,
    #[event(name = "Placed")]
    PlacedAgain,
    #[event(name = "Shipped")]
    Sent,
    #[event(name = "Shipped")]
    Dispatched { carrier: String },
}

fn main() {}
