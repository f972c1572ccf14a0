use eventsource::DomainEvent;

#[derive(DomainEvent)]
pub enum Wrapped<T> {
    Happened(T),
}

#[derive(DomainEvent)]
pub enum Bounded
where
    u32: Copy,
{
    Happened(u32),
}

fn main() {}
