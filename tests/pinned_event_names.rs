//! End to end through the facade, against PostgreSQL: events stored under a pinned type name
//! stay readable after the Rust variant is renamed, and after their payload changed shape (an
//! upcaster reads the old versions).

use async_trait::async_trait;
use eventsource::postgres::testing::TestDatabase;
use eventsource::{
    Aggregate, CommandContext, DomainEvent, EventAppender, EventMetadata, ExpectedVersion,
    NewEvent, Repository, StreamReader, StreamVersion,
};
use futures::TryStreamExt;

/// The events as first released.
mod v1 {
    use eventsource::DomainEvent;

    #[derive(Debug, Clone, PartialEq, DomainEvent)]
    pub enum AccountEvent {
        #[event(name = "AccountOpened")]
        Opened { owner: String },
        #[event(name = "MoneyDeposited")]
        Deposited { cents: u64 },
    }
}

/// The same events after a refactor renamed the variants (names pinned, so storage is the same).
mod v2 {
    use eventsource::DomainEvent;

    #[derive(Debug, Clone, PartialEq, DomainEvent)]
    pub enum AccountEvent {
        #[event(name = "AccountOpened")]
        AccountWasOpened { owner: String },
        #[event(name = "MoneyDeposited")]
        FundsAdded { cents: u64 },
    }
}

/// An account folded from the renamed events.
#[derive(Debug, Default)]
struct Account {
    owner: Option<String>,
    balance: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("the account is not open")]
struct NotOpen;

#[async_trait]
impl Aggregate for Account {
    const CATEGORY: &'static str = "account";
    type Event = v2::AccountEvent;
    type Command = u64;
    type Error = NotOpen;
    type Services = ();

    fn apply(&mut self, event: &v2::AccountEvent) {
        match event {
            v2::AccountEvent::AccountWasOpened { owner } => self.owner = Some(owner.clone()),
            v2::AccountEvent::FundsAdded { cents } => self.balance += cents,
        }
    }

    async fn handle(&self, cents: &u64, _: &()) -> Result<Vec<v2::AccountEvent>, NotOpen> {
        self.owner.as_ref().ok_or(NotOpen)?;
        Ok(vec![v2::AccountEvent::FundsAdded { cents: *cents }])
    }
}

#[tokio::test]
async fn renamed_variants_read_events_stored_before_the_rename() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let id = Account::stream_id("acc-1").expect("id");

    // Stored by the old code.
    let old_events = [
        v1::AccountEvent::Opened {
            owner: "Ada".into(),
        },
        v1::AccountEvent::Deposited { cents: 1_500 },
    ];
    let new_events: Vec<NewEvent> = old_events
        .iter()
        .map(|e| NewEvent::from_domain(e, EventMetadata::default()).expect("encode"))
        .collect();
    store
        .append(&id, ExpectedVersion::NoStream, new_events)
        .await
        .expect("append with the old code");

    // Read and extended by the new code.
    let accounts = Repository::<Account, _>::new(store.clone());
    let loaded = accounts
        .load(&id)
        .await
        .expect("old events decode into renamed variants");
    assert_eq!(loaded.state.owner.as_deref(), Some("Ada"));
    assert_eq!(loaded.state.balance, 1_500);
    accounts
        .execute(&id, 500, &CommandContext::new())
        .await
        .expect("a command on the old stream");

    // Stored type names never changed; the old code can still read the new event too.
    let stored: Vec<_> = store
        .read_stream(&id, StreamVersion::FIRST)
        .try_collect()
        .await
        .expect("read");
    let types: Vec<&str> = stored.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["AccountOpened", "MoneyDeposited", "MoneyDeposited"]);
    let last: v1::AccountEvent = stored[2].decode().expect("old code decodes the new event");
    assert_eq!(last, v1::AccountEvent::Deposited { cents: 500 });
    assert_eq!(
        v2::AccountEvent::EVENT_TYPES,
        ["AccountOpened", "MoneyDeposited"]
    );
    db.drop_database().await.expect("drop");
}

/// The events after deposits gained a currency (schema version 2); version 1 payloads are
/// upcast when read.
mod v3 {
    use eventsource::DomainEvent;
    use serde_json::{json, Value};

    fn deposit_v1(_version: u32, payload: Value) -> Result<Value, String> {
        let cents = payload
            .get("cents")
            .cloned()
            .ok_or("a version 1 deposit has cents")?;
        Ok(json!({ "cents": cents, "currency": "EUR" }))
    }

    #[derive(Debug, Clone, PartialEq, DomainEvent)]
    pub enum AccountEvent {
        #[event(name = "AccountOpened")]
        Opened { owner: String },
        #[event(name = "MoneyDeposited", version = 2, upcast = "deposit_v1")]
        Deposited { cents: u64, currency: String },
    }
}

#[tokio::test]
async fn upcasters_read_events_stored_in_an_older_shape() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let id = Account::stream_id("acc-2").expect("id");
    let old_events = [
        v1::AccountEvent::Opened {
            owner: "Ada".into(),
        },
        v1::AccountEvent::Deposited { cents: 700 },
    ];
    let mut events: Vec<NewEvent> = old_events
        .iter()
        .map(|e| NewEvent::from_domain(e, EventMetadata::default()).expect("encode"))
        .collect();
    let new_deposit = v3::AccountEvent::Deposited {
        cents: 300,
        currency: "USD".into(),
    };
    events.push(NewEvent::from_domain(&new_deposit, EventMetadata::default()).expect("encode"));
    store
        .append(&id, ExpectedVersion::NoStream, events)
        .await
        .expect("append old and new shapes");

    let stored: Vec<_> = store
        .read_stream(&id, StreamVersion::FIRST)
        .try_collect()
        .await
        .expect("read");
    let versions: Vec<u32> = stored.iter().map(|e| e.schema_version).collect();
    assert_eq!(
        versions,
        [1, 1, 2],
        "each event keeps the version it was stored with"
    );
    let decoded: Vec<v3::AccountEvent> = stored
        .iter()
        .map(|e| e.decode().expect("every version decodes"))
        .collect();
    assert_eq!(
        decoded,
        [
            v3::AccountEvent::Opened {
                owner: "Ada".into()
            },
            v3::AccountEvent::Deposited {
                cents: 700,
                currency: "EUR".into()
            },
            new_deposit,
        ]
    );
    db.drop_database().await.expect("drop");
}
