//! The inbox core against PostgreSQL: a message's effect is committed once, whatever the number
//! of deliveries and however they race; a failing handler is retried, then reported.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventsource_postgres::inbox::{Disposition, Inbox, InboxHandler, InboxRetry, IncomingMessage};
use eventsource_postgres::testing::TestDatabase;
use eventsource_postgres::{PgConnection, PostgresStore};

/// Inserts one row per message into `effects`; fails its first `failures` calls.
struct Effects {
    calls: AtomicU32,
    failures: u32,
}

impl Effects {
    fn failing(failures: u32) -> Self {
        Self {
            calls: AtomicU32::new(0),
            failures,
        }
    }
}

#[async_trait]
impl InboxHandler for Effects {
    type Error = Box<dyn std::error::Error + Send + Sync>;

    async fn handle(
        &self,
        tx: &mut PgConnection,
        message: &IncomingMessage,
    ) -> Result<(), Self::Error> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        // Written before failing: a failed attempt must leave no trace.
        sqlx::query("INSERT INTO effects (message_id) VALUES ($1)")
            .bind(&message.message_id)
            .execute(&mut *tx)
            .await?;
        if call <= self.failures {
            return Err(format!("injected failure {call}").into());
        }
        Ok(())
    }
}

async fn fresh() -> (TestDatabase, PostgresStore) {
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");
    sqlx::query("CREATE TABLE effects (message_id text NOT NULL)")
        .execute(store.pool())
        .await
        .expect("effects table");
    (db, store)
}

fn message(id: &str) -> IncomingMessage {
    IncomingMessage {
        message_id: id.to_owned(),
        subject: "order.OrderConfirmed".to_owned(),
        headers: BTreeMap::from([(
            "correlation-id".to_owned(),
            "0192f7c4-0000-7000-8000-000000000001".to_owned(),
        )]),
        payload: b"{}".to_vec(),
    }
}

async fn effects(store: &PostgresStore) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM effects")
        .fetch_one(store.pool())
        .await
        .expect("count effects")
}

fn quick() -> InboxRetry {
    InboxRetry {
        max_attempts: 3,
        backoff: Duration::from_millis(5),
    }
}

#[tokio::test]
async fn a_redelivered_message_is_recognised_and_its_handler_does_not_run_again() {
    let (db, store) = fresh().await;
    let inbox = Inbox::new(store.clone(), "shipping").with_retry(quick());
    let handler = Effects::failing(0);
    let first = inbox
        .receive(&handler, &message("m-1"))
        .await
        .expect("first");
    let again = inbox
        .receive(&handler, &message("m-1"))
        .await
        .expect("again");
    assert!(matches!(first, Disposition::Handled), "{first:?}");
    assert!(matches!(again, Disposition::Duplicate), "{again:?}");
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
    assert_eq!(effects(&store).await, 1);
    assert!(inbox.was_handled("m-1").await.expect("look up"));
    assert!(!inbox.was_handled("m-2").await.expect("look up"));
    // Another inbox keeps its own record of the same id.
    let other = Inbox::new(store.clone(), "billing");
    assert!(matches!(
        other
            .receive(&handler, &message("m-1"))
            .await
            .expect("other"),
        Disposition::Handled
    ));
    let correlation: Option<uuid::Uuid> = sqlx::query_scalar(
        "SELECT correlation_id FROM eventsource.inbox_messages WHERE inbox = 'shipping'",
    )
    .fetch_one(store.pool())
    .await
    .expect("record");
    assert_eq!(
        correlation.map(|c| c.to_string()).as_deref(),
        Some("0192f7c4-0000-7000-8000-000000000001")
    );
    db.drop_database().await.expect("drop");
}

#[tokio::test]
async fn concurrent_deliveries_of_one_message_apply_its_effect_once() {
    let (db, store) = fresh().await;
    let inbox = Inbox::new(store.clone(), "racing");
    let handler = Arc::new(Effects::failing(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (inbox, handler) = (inbox.clone(), handler.clone());
        tasks.push(tokio::spawn(async move {
            inbox.receive(&*handler, &message("same")).await
        }));
    }
    let mut handled = 0;
    let mut duplicates = 0;
    for task in tasks {
        match task.await.expect("join").expect("receive") {
            Disposition::Handled => handled += 1,
            Disposition::Duplicate => duplicates += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((handled, duplicates), (1, 7));
    assert_eq!(effects(&store).await, 1);
    db.drop_database().await.expect("drop");
}

#[tokio::test]
async fn a_handler_that_recovers_within_its_attempts_is_applied_once() {
    let (db, store) = fresh().await;
    let inbox = Inbox::new(store.clone(), "flaky").with_retry(quick());
    let handler = Effects::failing(2);
    let outcome = inbox
        .receive(&handler, &message("m"))
        .await
        .expect("receive");
    assert!(matches!(outcome, Disposition::Handled), "{outcome:?}");
    assert_eq!(handler.calls.load(Ordering::SeqCst), 3);
    assert_eq!(effects(&store).await, 1, "failed attempts left nothing");
    db.drop_database().await.expect("drop");
}

#[tokio::test]
async fn a_handler_that_keeps_failing_is_reported_with_its_error_and_leaves_no_record() {
    let (db, store) = fresh().await;
    let inbox = Inbox::new(store.clone(), "broken").with_retry(quick());
    let handler = Effects::failing(u32::MAX);
    let outcome = inbox
        .receive(&handler, &message("m"))
        .await
        .expect("receive");
    match outcome {
        Disposition::Failed { error, attempts } => {
            assert_eq!(attempts, 3);
            assert_eq!(error.to_string(), "injected failure 3");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(handler.calls.load(Ordering::SeqCst), 3);
    assert_eq!(effects(&store).await, 0);
    assert!(
        !inbox.was_handled("m").await.expect("look up"),
        "a failed message can come again"
    );
    db.drop_database().await.expect("drop");
}
