//! Generated orders, appended through the repository many at a time, so that the read models
//! (and a rebuild of them) have a real amount of history to work through.

use std::error::Error;
use std::time::Instant;

use eventsource::{Aggregate, CommandContext, EventStore, Repository};
use futures::{StreamExt, TryStreamExt};
use uuid::Uuid;

use crate::domain::{Order, OrderCommand};
use crate::progress;

/// Orders in flight at once (each is a sequence of commands; different orders run concurrently).
const CONCURRENCY: usize = 16;

/// What seeded orders buy: (sku, unit price in cents). A sku always has the same price, so a
/// second `AddItem` of it merges into the line.
const CATALOGUE: &[(&str, u64)] = &[
    ("COFFEE-1KG", 1_890),
    ("FILTERS-100", 450),
    ("GRINDER", 8_900),
    ("MUG", 1_200),
    ("TEA", 700),
    ("KETTLE", 4_500),
    ("SCALE", 2_350),
];

/// Seeded orders belong to `customer-00` ... `customer-49`.
const CUSTOMERS: u64 = 50;

/// Appends `count` generated orders, [`CONCURRENCY`] at a time, each command through the
/// repository (load, decide, append), with a progress bar. Returns the events appended.
pub async fn seed<S: EventStore + Clone + 'static>(
    store: &S,
    count: usize,
) -> Result<u64, Box<dyn Error>> {
    let orders = Repository::<Order, S>::new(store.clone());
    let ctx = CommandContext::new().with_actor("seed");
    let bar = progress::bar("seeding", "orders", u64::try_from(count)?);
    let started = Instant::now();
    let events = futures::stream::iter(0..count)
        .map(|n| seed_order(&orders, &ctx, n as u64))
        .buffer_unordered(CONCURRENCY)
        .try_fold(0u64, |total, events| {
            bar.inc(1);
            async move { Ok(total + events) }
        })
        .await?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "   seeded {count} orders ({events} events) in {seconds:.1} s ({:.0} events/s)",
        events as f64 / seconds
    );
    Ok(events)
}

/// Runs the commands of generated order number `n`; returns the events they appended.
pub async fn seed_order<S: EventStore>(
    orders: &Repository<Order, S>,
    ctx: &CommandContext,
    n: u64,
) -> Result<u64, Box<dyn Error>> {
    let id = Order::stream_id(Uuid::now_v7().to_string())?;
    let mut events = 0;
    for command in commands(n) {
        let done = orders.execute(&id, command, &ctx.next_command()).await?;
        events += done.events.len() as u64;
    }
    Ok(events)
}

/// The commands of order number `n`: placed, one to four item additions (sometimes the same sku
/// twice), sometimes a line removed, then left open, confirmed, shipped or cancelled. Varied but
/// deterministic, and all of them accepted by the order.
fn commands(n: u64) -> Vec<OrderCommand> {
    let mut dice = Dice::new(n);
    let mut commands = vec![OrderCommand::PlaceOrder {
        customer: format!("customer-{:02}", n % CUSTOMERS),
    }];
    let mut skus = Vec::new();
    for _ in 0..=dice.roll(4) {
        let (sku, price) = CATALOGUE[dice.roll(CATALOGUE.len() as u64) as usize];
        commands.push(OrderCommand::AddItem {
            sku: sku.to_owned(),
            quantity: 1 + dice.roll(5) as u32,
            unit_price_cents: price,
        });
        if !skus.contains(&sku) {
            skus.push(sku);
        }
    }
    // Remove a line only when another one stays, so the order can still be confirmed.
    if skus.len() > 1 && dice.roll(4) == 0 {
        commands.push(OrderCommand::RemoveItem {
            sku: skus[0].to_owned(),
        });
    }
    let cancel = || OrderCommand::Cancel {
        reason: "seeded".to_owned(),
    };
    match dice.roll(10) {
        0 => {}
        1 => commands.push(cancel()),
        outcome => {
            commands.push(OrderCommand::Confirm);
            match outcome {
                2 => commands.push(cancel()),
                3..=6 => commands.push(OrderCommand::Ship {
                    tracking_number: format!("SEED-{n}"),
                }),
                _ => {}
            }
        }
    }
    commands
}

/// A tiny deterministic generator (xorshift64*), enough to vary the seeded orders.
struct Dice(u64);

impl Dice {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A number in `0..sides`.
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % sides
    }
}
