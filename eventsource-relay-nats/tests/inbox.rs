//! The inbox over a durable JetStream consumer: a redelivery after the commit is acknowledged
//! without running the handler again; a handler that always fails sends its message to the
//! dead-letter subject with the error, while the others are handled.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{delete_streams, eventually, jetstream, relay_options, Names, RunningRelay};
use eventsource_postgres::delivery_check::{
    check_delivery, stored_messages, write_concurrently, ReceivedMessage,
};
use eventsource_postgres::inbox::{
    failure_header, Disposition, Inbox, InboxHandler, InboxRetry, IncomingMessage,
};
use eventsource_postgres::relay::header;
use eventsource_postgres::testing::TestDatabase;
use eventsource_postgres::{PgConnection, PostgresStore};
use eventsource_relay_nats::async_nats::jetstream::consumer::pull;
use eventsource_relay_nats::async_nats::jetstream::message::PublishMessage;
use eventsource_relay_nats::async_nats::{self, jetstream as js_api, HeaderMap};
use eventsource_relay_nats::{incoming_message, NatsInbox, NatsInboxOptions};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Records each message in `effects` (one row per message id) and counts its calls; fails
/// every message whose body is `"poison"`.
#[derive(Clone, Default)]
struct Effects {
    calls: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
}

#[async_trait]
impl InboxHandler for Effects {
    type Error = Box<dyn std::error::Error + Send + Sync>;

    async fn handle(
        &self,
        tx: &mut PgConnection,
        message: &IncomingMessage,
    ) -> Result<(), Self::Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if message.payload == b"\"poison\"" {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err("the shipping address is missing".into());
        }
        sqlx::query("INSERT INTO effects (message_id) VALUES ($1)")
            .bind(&message.message_id)
            .execute(tx)
            .await?;
        Ok(())
    }
}

async fn effects_table(store: &PostgresStore) {
    sqlx::query("CREATE TABLE effects (message_id text PRIMARY KEY)")
        .execute(store.pool())
        .await
        .expect("create the effects table");
}

async fn effect_rows(store: &PostgresStore) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM effects")
        .fetch_one(store.pool())
        .await
        .expect("count effects")
}

/// Publishes `body` to `<prefix>.order.Shipped` as a relay would (message id in both headers).
async fn publish(js: &js_api::Context, names: &Names, body: &str) -> String {
    let id = Uuid::now_v7().to_string();
    let mut headers = HeaderMap::new();
    headers.insert(header::MESSAGE_ID, id.as_str());
    headers.insert(header::EVENT_TYPE, "Shipped");
    let publish = PublishMessage::build()
        .payload(body.to_owned().into_bytes().into())
        .headers(headers)
        .message_id(&id);
    js.send_publish(format!("{}.order.Shipped", names.prefix), publish)
        .await
        .expect("publish")
        .await
        .expect("PubAck");
    id
}

fn inbox_options(names: &Names) -> NatsInboxOptions {
    NatsInboxOptions {
        ack_wait: Duration::from_secs(1),
        requeue_delay: Duration::from_millis(100),
        ..NatsInboxOptions::new(&names.stream, &names.consumer)
            .with_dead_letters(&names.dead_letter_prefix, &names.dead_letter_stream)
    }
}

async fn consumer_info(js: &js_api::Context, names: &Names) -> js_api::consumer::Info {
    let consumer: js_api::consumer::Consumer<pull::Config> = js
        .get_consumer_from_stream(&names.consumer, &names.stream)
        .await
        .expect("the consumer");
    consumer.get_info().await.expect("consumer info")
}

#[tokio::test]
async fn a_redelivery_after_the_commit_is_acked_without_running_the_handler() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    effects_table(&store).await;
    let names = Names::new("redeliver");
    let js = jetstream().await;
    common::create_stream(&js, &names.stream_setup()).await;
    let nats_inbox = NatsInbox::new(
        common::nats_url(),
        Inbox::new(store.clone(), &names.consumer),
        inbox_options(&names),
    )
    .expect("inbox options");
    nats_inbox.ensure_topology().await.expect("topology");
    let id = publish(&js, &names, "\"first\"").await;
    let handler = Effects::default();

    // A consumer that crashes between its commit and its ack: it receives the message, the
    // inbox commits the handler's effect, and the connection goes away unacknowledged.
    {
        let client = async_nats::connect(common::nats_url())
            .await
            .expect("connect");
        let raw = js_api::new(client.clone());
        let consumer: js_api::consumer::Consumer<pull::Config> = raw
            .get_consumer_from_stream(&names.consumer, &names.stream)
            .await
            .expect("the consumer");
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .messages()
            .await
            .expect("fetch");
        let message = batch.next().await.expect("one message").expect("a message");
        let incoming = incoming_message(&message);
        assert_eq!(incoming.message_id, id);
        let disposition = Inbox::new(store.clone(), &names.consumer)
            .receive(&handler, &incoming)
            .await
            .expect("receive");
        assert!(
            matches!(disposition, Disposition::Handled),
            "{disposition:?}"
        );
        drop(batch);
        drop(message);
        drop(consumer);
        drop(raw);
        drop(client);
    }
    assert_eq!(
        consumer_info(&js, &names).await.num_ack_pending,
        1,
        "the crash left it unacknowledged"
    );

    // The inbox loop gets the redelivery (after ack_wait) and acks it as a duplicate.
    let shutdown = CancellationToken::new();
    let mut status = nats_inbox.status();
    let run = {
        let shutdown = shutdown.clone();
        let handler = handler.clone();
        async move { nats_inbox.run(&handler, shutdown).await }
    };
    let task = tokio::spawn(run);
    tokio::time::timeout(common::DEADLINE, status.wait_for(|s| s.duplicates == 1))
        .await
        .expect("the redelivery within the deadline")
        .expect("inbox status");
    eventually("the consumer to have nothing pending", || async {
        let info = consumer_info(&js, &names).await;
        info.num_ack_pending == 0 && info.num_pending == 0
    })
    .await;
    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        1,
        "the handler ran once"
    );
    assert_eq!(effect_rows(&store).await, 1, "one effect");
    let last = status.borrow().clone();
    assert_eq!(
        (last.handled, last.duplicates, last.dead_lettered),
        (0, 1, 0),
        "{last:?}"
    );
    assert!(consumer_info(&js, &names).await.num_redelivered <= 1);

    shutdown.cancel();
    task.await
        .expect("inbox task")
        .expect("inbox ends without error");
    delete_streams(&js, &names).await;
    db.drop_database().await.expect("drop the test database");
}

#[tokio::test]
async fn a_handler_that_always_fails_dead_letters_its_message_with_the_error() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    effects_table(&store).await;
    let names = Names::new("poison");
    let js = jetstream().await;
    common::create_stream(&js, &names.stream_setup()).await;
    let retry = InboxRetry {
        max_attempts: 2,
        backoff: Duration::from_millis(10),
    };
    let nats_inbox = NatsInbox::new(
        common::nats_url(),
        Inbox::new(store.clone(), &names.consumer).with_retry(retry),
        inbox_options(&names),
    )
    .expect("inbox options");
    nats_inbox.ensure_topology().await.expect("topology");
    let mut good = vec![publish(&js, &names, "\"a\"").await];
    let poison = publish(&js, &names, "\"poison\"").await;
    good.push(publish(&js, &names, "\"b\"").await);
    good.push(publish(&js, &names, "\"c\"").await);

    let handler = Effects::default();
    let shutdown = CancellationToken::new();
    let mut status = nats_inbox.status();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        let handler = handler.clone();
        async move { nats_inbox.run(&handler, shutdown).await }
    });
    tokio::time::timeout(
        common::DEADLINE,
        status.wait_for(|s| s.handled == 3 && s.dead_lettered == 1),
    )
    .await
    .expect("every message dealt with within the deadline")
    .expect("inbox status");
    eventually("the consumer to have nothing pending", || async {
        let info = consumer_info(&js, &names).await;
        info.num_ack_pending == 0 && info.num_pending == 0
    })
    .await;
    assert_eq!(
        effect_rows(&store).await,
        3,
        "the other messages are handled"
    );
    assert_eq!(
        handler.failures.load(Ordering::SeqCst),
        2,
        "two attempts, no redelivery"
    );

    // The dead letter: a copy on <dlq prefix>.<subject> with the error in its headers.
    let dead_letters = js
        .get_stream(&names.dead_letter_stream)
        .await
        .expect("the dead-letter stream");
    let dead_letter_subject = format!(
        "{}.{}.order.Shipped",
        names.dead_letter_prefix, names.prefix
    );
    let copy = dead_letters
        .get_last_raw_message_by_subject(&dead_letter_subject)
        .await
        .expect("the dead-letter copy");
    assert_eq!(copy.payload.as_ref(), b"\"poison\"");
    let headers = copy.headers;
    let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(
        get(failure_header::ERROR).as_deref(),
        Some("the shipping address is missing")
    );
    assert_eq!(get(failure_header::ATTEMPTS).as_deref(), Some("2"));
    assert_eq!(get(failure_header::INBOX), Some(names.consumer.clone()));
    assert_eq!(get(header::MESSAGE_ID), Some(poison.clone()));
    let mut info = dead_letters.clone();
    assert_eq!(
        info.info().await.expect("stream info").state.messages,
        1,
        "one dead letter"
    );

    shutdown.cancel();
    task.await
        .expect("inbox task")
        .expect("inbox ends without error");
    delete_streams(&js, &names).await;
    db.drop_database().await.expect("drop the test database");
}

#[tokio::test]
async fn an_inbox_whose_consumer_does_not_exist_says_so() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let names = Names::new("missing");
    let js = jetstream().await;
    common::create_stream(&js, &names.stream_setup()).await;
    let nats_inbox = NatsInbox::new(
        common::nats_url(),
        Inbox::new(store.clone(), &names.consumer),
        inbox_options(&names),
    )
    .expect("inbox options");
    let ended = tokio::time::timeout(
        common::DEADLINE,
        nats_inbox.run(&Effects::default(), CancellationToken::new()),
    )
    .await
    .expect("run returns");
    let error = ended
        .expect_err("a missing consumer is an error")
        .to_string();
    assert!(
        error.contains(&names.consumer) && error.contains("ensure_topology"),
        "{error}"
    );
    delete_streams(&js, &names).await;
    db.drop_database().await.expect("drop the test database");
}

/// Records every message's stream and version, in the order handled.
#[derive(Clone, Default)]
struct Ledger;

#[async_trait]
impl InboxHandler for Ledger {
    type Error = sqlx::Error;

    async fn handle(
        &self,
        tx: &mut PgConnection,
        message: &IncomingMessage,
    ) -> Result<(), sqlx::Error> {
        let version: i64 = message
            .header(header::STREAM_VERSION)
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1);
        sqlx::query("INSERT INTO ledger (message_id, stream, version) VALUES ($1, $2, $3)")
            .bind(&message.message_id)
            .bind(message.header(header::STREAM))
            .bind(version)
            .execute(tx)
            .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_relayed_event_is_handled_once_in_stream_order_by_concurrent_workers() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    sqlx::query(
        "CREATE TABLE ledger (seq bigserial PRIMARY KEY, message_id text NOT NULL, stream text NOT NULL, version bigint NOT NULL)",
    )
    .execute(store.pool())
    .await
    .expect("create the ledger");
    let names = Names::new("ledger");
    let js = jetstream().await;
    common::create_stream(&js, &names.stream_setup()).await;
    let nats_inbox = NatsInbox::new(
        common::nats_url(),
        Inbox::new(store.clone(), &names.consumer),
        NatsInboxOptions {
            concurrency: 8,
            ..inbox_options(&names)
        },
    )
    .expect("inbox options");
    nats_inbox.ensure_topology().await.expect("topology");
    let shutdown = CancellationToken::new();
    let mut status = nats_inbox.status();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { nats_inbox.run(&Ledger, shutdown).await }
    });
    let relay = RunningRelay::start(&store, "nats", names.publisher(), relay_options());

    let appended = write_concurrently(&store, "order", 8, 4, 25)
        .await
        .expect("writers");
    tokio::time::timeout(
        common::DEADLINE,
        status.wait_for(|s| s.handled as usize >= appended),
    )
    .await
    .expect("every event handled within the deadline")
    .expect("inbox status");
    relay.stop().await;
    shutdown.cancel();
    task.await
        .expect("inbox task")
        .expect("inbox ends without error");

    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT message_id, stream, version FROM ledger ORDER BY seq")
            .fetch_all(store.pool())
            .await
            .expect("read the ledger");
    let handled: Vec<ReceivedMessage> = rows
        .into_iter()
        .map(|(message_id, stream, version)| ReceivedMessage {
            message_id,
            stream,
            version: version as u64,
        })
        .collect();
    let stored = stored_messages(&store).await.expect("stored events");
    let report = check_delivery(&stored, &handled);
    assert!(report.is_complete_and_ordered(), "{report:?}");
    assert_eq!(report.duplicates, 0);
    assert_eq!(handled.len(), appended);
    let last = status.borrow().clone();
    assert_eq!(
        (last.handled as usize, last.dead_lettered, last.requeued),
        (appended, 0, 0),
        "{last:?}"
    );

    delete_streams(&js, &names).await;
    db.drop_database().await.expect("drop the test database");
}

/// A TCP proxy to PostgreSQL that the test takes down (closing every connection through it
/// and refusing new ones) and up again: the inbox's database, unreachable on demand.
struct DatabaseProxy {
    port: u16,
    up: tokio::sync::watch::Sender<bool>,
}

impl DatabaseProxy {
    async fn start(target: (String, u16)) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("the proxy's address").port();
        let (up, _) = tokio::sync::watch::channel(true);
        let watch = up.subscribe();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !*watch.borrow() {
                    continue; // dropped: the connection is refused
                }
                let mut down = watch.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { port, up }
    }

    fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }

    /// A store on `db` through the proxy, whose connections fail fast while it is down.
    fn store(&self, db: &TestDatabase) -> PostgresStore {
        let options = db.connect_options().host("127.0.0.1").port(self.port);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_millis(500))
            .connect_lazy_with(options);
        PostgresStore::new(pool)
    }
}

/// The PostgreSQL server's host and port, from DATABASE_URL.
fn database_address(db: &TestDatabase) -> (String, u16) {
    let options = db.connect_options();
    let host = options.get_host();
    let host = if host.starts_with('/') {
        "127.0.0.1"
    } else {
        host
    };
    (host.to_owned(), options.get_port())
}

#[tokio::test]
async fn a_message_the_database_cannot_take_is_requeued_and_handled_once_it_is_back() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    effects_table(&store).await;
    let proxy = DatabaseProxy::start(database_address(&db)).await;
    let names = Names::new("dbdown");
    let js = jetstream().await;
    common::create_stream(&js, &names.stream_setup()).await;
    let nats_inbox = NatsInbox::new(
        common::nats_url(),
        Inbox::new(proxy.store(&db), &names.consumer),
        NatsInboxOptions {
            requeue_delay: Duration::from_millis(50),
            max_requeue_delay: Duration::from_millis(200),
            ..inbox_options(&names)
        },
    )
    .expect("inbox options");
    nats_inbox.ensure_topology().await.expect("topology");
    proxy.set_up(false);
    publish(&js, &names, "\"first\"").await;

    let handler = Effects::default();
    let shutdown = CancellationToken::new();
    let mut status = nats_inbox.status();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        let handler = handler.clone();
        async move { nats_inbox.run(&handler, shutdown).await }
    });
    tokio::time::timeout(common::DEADLINE, status.wait_for(|s| s.requeued >= 2))
        .await
        .expect("requeued while the database is down")
        .expect("inbox status");
    assert_eq!(handler.calls.load(Ordering::SeqCst), 0);
    proxy.set_up(true);
    tokio::time::timeout(common::DEADLINE, status.wait_for(|s| s.handled == 1))
        .await
        .expect("handled once the database is back")
        .expect("inbox status");
    eventually("the consumer to have nothing pending", || async {
        let info = consumer_info(&js, &names).await;
        info.num_ack_pending == 0 && info.num_pending == 0
    })
    .await;
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
    assert_eq!(effect_rows(&store).await, 1);
    assert_eq!(status.borrow().dead_lettered, 0);

    shutdown.cancel();
    task.await
        .expect("inbox task")
        .expect("inbox ends without error");
    delete_streams(&js, &names).await;
    db.drop_database().await.expect("drop the test database");
}

#[tokio::test]
async fn on_its_last_delivery_a_message_the_database_cannot_take_is_dead_lettered() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let proxy = DatabaseProxy::start(database_address(&db)).await;
    let names = Names::new("lastdelivery");
    let js = jetstream().await;
    common::create_stream(&js, &names.stream_setup()).await;
    let nats_inbox = NatsInbox::new(
        common::nats_url(),
        Inbox::new(proxy.store(&db), &names.consumer),
        NatsInboxOptions {
            max_deliver: 3,
            requeue_delay: Duration::from_millis(50),
            max_requeue_delay: Duration::from_millis(200),
            ..inbox_options(&names)
        },
    )
    .expect("inbox options");
    nats_inbox.ensure_topology().await.expect("topology");
    proxy.set_up(false);
    let id = publish(&js, &names, "\"first\"").await;

    let shutdown = CancellationToken::new();
    let mut status = nats_inbox.status();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { nats_inbox.run(&Effects::default(), shutdown).await }
    });
    tokio::time::timeout(common::DEADLINE, status.wait_for(|s| s.dead_lettered == 1))
        .await
        .expect("dead-lettered on its last delivery")
        .expect("inbox status");
    assert_eq!(
        status.borrow().requeued,
        2,
        "requeued on the deliveries before the last"
    );
    eventually("the consumer to have nothing pending", || async {
        let info = consumer_info(&js, &names).await;
        info.num_ack_pending == 0 && info.num_pending == 0
    })
    .await;
    let copy = js
        .get_stream(&names.dead_letter_stream)
        .await
        .expect("the dead-letter stream")
        .get_last_raw_message_by_subject(&format!(
            "{}.{}.order.Shipped",
            names.dead_letter_prefix, names.prefix
        ))
        .await
        .expect("the dead-letter copy");
    let error = copy
        .headers
        .get(failure_header::ERROR)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    assert!(error.contains(&id) && error.contains("connect"), "{error}");
    assert_eq!(
        copy.headers
            .get(failure_header::ATTEMPTS)
            .map(|v| v.as_str()),
        Some("0")
    );
    drop(store);

    shutdown.cancel();
    task.await
        .expect("inbox task")
        .expect("inbox ends without error");
    delete_streams(&js, &names).await;
    db.drop_database().await.expect("drop the test database");
}
