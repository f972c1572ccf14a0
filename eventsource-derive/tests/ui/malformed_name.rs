use eventsource::DomainEvent;

#[derive(DomainEvent)]
pub enum OrderEvent {
    #[event(name)]
    A,
    #[event(name = OrderPlaced)]
    B,
    #[event(name = "")]
    C,
    #[event(name = " Padded")]
    D,
    #[event(name = "E1", name = "E2")]
    E,
    #[event(name("F"))]
    F,
}

fn main() {}
