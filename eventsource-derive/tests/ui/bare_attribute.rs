use eventsource::DomainEvent;

#[derive(DomainEvent)]
pub enum OrderEvent {
    #[event]
    A,
    #[event = "B"]
    B,
}

fn main() {}
