use eventsource::DomainEvent;

#[derive(DomainEvent)]
#[event(rename_all = "snake_case", name = "Order")]
pub enum OrderEvent {
    #[event(nme = "Placed")]
    Placed,
    #[event(crate = "eventsource", version = 2, since = 3)]
    Shipped {
        #[event(name = "carrier")]
        carrier: String,
    },
}

fn main() {}
