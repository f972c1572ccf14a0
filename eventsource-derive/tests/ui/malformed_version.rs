use eventsource::DomainEvent;

#[derive(DomainEvent)]
pub enum OrderEvent {
    #[event(version = "2")]
    A,
    #[event(version = 0)]
    B,
    #[event(version = -1)]
    C,
    #[event(version = 2147483648)]
    D,
    #[event(version)]
    E,
    #[event(version = 1)]
    #[event(version = 2)]
    F,
    #[event(version = 1.5)]
    G,
}

fn main() {}
