//! Connecting: a server that is down is reported within seconds, naming what was tried, and no
//! message, `Debug` output or log line shows a password in any form a URL can carry it.

use std::error::Error as _;
use std::io::Write;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsource_core::StoreError;
use eventsource_postgres::testing::{database_url, TestDatabase};
use eventsource_postgres::PostgresStore;
use sqlx::postgres::PgConnectOptions;

/// A password holding the characters a URL's user information treats specially.
const SECRET: &str = "S3cr3t-PW@x:y/z";
/// [`SECRET`] percent-encoded for a URL.
const ENCODED: &str = "S3cr3t-PW%40x%3Ay%2Fz";
/// [`SECRET`] with its `@` and `:` left as they are (a URL parser takes the last `@` as the end
/// of the user information), and only its `/` encoded.
const HALF_ENCODED: &str = "S3cr3t-PW@x:y%2Fz";
/// Texts no output may contain: the secret in its forms, and telling parts of it.
const FORBIDDEN: [&str; 6] = [SECRET, ENCODED, HALF_ENCODED, "S3cr3t", "x:y", "y%2Fz"];

/// A port on 127.0.0.1 nothing listens on (bound once by the OS, then released).
fn refused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// The test server's host and port.
fn test_server() -> (String, u16) {
    let options = PgConnectOptions::from_str(&database_url()).expect("DATABASE_URL parses");
    (options.get_host().to_owned(), options.get_port())
}

/// The URL of `database` on `host:port` as user `postgres`, with [`SECRET`] given in each form
/// a URL allows.
fn urls_with_secret(host: &str, port: u16, database: &str) -> Vec<String> {
    let server = format!("{host}:{port}/{database}");
    vec![
        format!("postgres://postgres:{ENCODED}@{server}"),
        format!("postgres://postgres:{HALF_ENCODED}@{server}"),
        format!("postgres://postgres@{server}?password={ENCODED}"),
        format!("postgres://postgres@{server}?sslmode=disable&password={ENCODED}"),
        format!("postgres://postgres:{ENCODED}@{server}?password={ENCODED}"),
    ]
}

/// URLs that give [`SECRET`] in a form the driver does not take, refused before it sees them
/// (it would log the value).
fn urls_with_unknown_secret(host: &str, port: u16, database: &str) -> Vec<String> {
    let server = format!("{host}:{port}/{database}");
    vec![
        format!("postgres://postgres@{server}?sslmode=disable&PassWord={ENCODED}"),
        format!("postgres://postgres@{server}?PASSWORD={SECRET}"),
    ]
}

/// The error's message and `Debug` output, and those of every error in its source chain.
fn everything_shown(error: &StoreError) -> Vec<String> {
    let mut shown = vec![format!("{error}"), format!("{error:?}")];
    let mut source = error.source();
    while let Some(inner) = source {
        shown.push(format!("{inner}"));
        shown.push(format!("{inner:?}"));
        source = inner.source();
    }
    shown
}

fn assert_no_secret(url: &str, texts: &[String]) {
    for text in texts {
        for secret in FORBIDDEN {
            assert!(
                !text.contains(secret),
                "`{secret}` shows in {text:?} (connecting with {url})"
            );
        }
    }
}

/// Connects to `url`, expecting a failure within a few seconds.
async fn failed_connect(url: &str) -> (StoreError, Duration) {
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(60), PostgresStore::connect(url))
        .await
        .expect("connect gives up");
    let took = started.elapsed();
    match result {
        Ok(_) => panic!("connecting with {url} succeeded"),
        Err(error) => (error, took),
    }
}

/// A refused port is reported within seconds (not after the pool's 30 s acquire timeout),
/// naming the host, port, database and user tried and what to do.
#[tokio::test]
async fn a_refused_port_is_reported_at_once_naming_the_server() {
    let port = refused_port();
    let url = format!("postgres://someone@127.0.0.1:{port}/some_db");
    let (error, took) = failed_connect(&url).await;
    let message = error.to_string();
    assert!(took < Duration::from_secs(5), "took {took:?}: {message}");
    for part in [
        format!("127.0.0.1:{port}"),
        "some_db".into(),
        "someone".into(),
        "start the server".into(),
        "DATABASE_URL".into(),
    ] {
        assert!(message.contains(&part), "`{part}` missing in: {message}");
    }
}

/// A server that accepts the TCP connection but never answers (a hung server, or a firewall
/// that swallows packets) is given up on after a few seconds, naming what was tried.
#[tokio::test]
async fn a_silent_server_is_given_up_on_within_seconds() {
    // Bound and listening but never accepting: the kernel completes the handshake and the
    // startup message goes unanswered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = silent.local_addr().expect("local address").port();
    let url = format!("postgres://postgres:{ENCODED}@127.0.0.1:{port}/postgres");
    let (error, took) = failed_connect(&url).await;
    let message = error.to_string();
    assert!(took < Duration::from_secs(10), "took {took:?}: {message}");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(message.contains("no connection within"), "{message}");
    assert_no_secret(&url, &everything_shown(&error));
    drop(silent);
}

/// A password in any URL form stays out of the error when the port is refused.
#[tokio::test]
async fn a_refused_connect_shows_no_password() {
    let port = refused_port();
    for url in urls_with_secret("127.0.0.1", port, "postgres") {
        let (error, took) = failed_connect(&url).await;
        assert!(took < Duration::from_secs(5), "took {took:?}: {error}");
        assert!(error.to_string().contains(&format!("127.0.0.1:{port}")));
        assert_no_secret(&url, &everything_shown(&error));
    }
}

/// A password in any URL form stays out of the error when the server turns the connection
/// down (a database that does not exist).
#[tokio::test]
async fn a_rejected_connect_shows_no_password() {
    let (host, port) = test_server();
    for url in urls_with_secret(&host, port, "eventsource_no_such_database") {
        let (error, took) = failed_connect(&url).await;
        assert!(took < Duration::from_secs(5), "took {took:?}: {error}");
        let message = error.to_string();
        assert!(
            message.contains("eventsource_no_such_database"),
            "the database is named: {message}"
        );
        assert_no_secret(&url, &everything_shown(&error));
    }
}

/// A URL that does not parse is shown without its password.
#[tokio::test]
async fn an_unparsable_url_shows_no_password() {
    for url in [
        format!("postgres://postgres:{ENCODED}@127.0.0.1:notaport/postgres"),
        format!("postgres://postgres@127.0.0.1:notaport/postgres?password={ENCODED}"),
        format!("postgres://postgres:{SECRET}@127.0.0.1:5432/postgres"),
    ]
    .into_iter()
    .chain(urls_with_unknown_secret("127.0.0.1", 5432, "postgres"))
    {
        let (error, _) = failed_connect(&url).await;
        assert_no_secret(&url, &everything_shown(&error));
    }
}

/// A connected store's `Debug` output (and a test database's) names the server, not the
/// password it was given.
#[tokio::test]
async fn a_connected_store_shows_no_password() {
    let db = TestDatabase::create().await.expect("test database");
    let (host, port) = test_server();
    // The test server trusts local connections: any password is accepted.
    for url in urls_with_secret(&host, port, db.name()) {
        let store = PostgresStore::connect(&url).await.expect("connect");
        let shown = format!("{store:?}");
        assert!(shown.contains(db.name()), "the database is named: {shown}");
        assert_no_secret(&url, &[shown, format!("{db:?}")]);
        store.close().await;
    }
    db.drop_database().await.expect("drop database");
}

/// Collects formatted log lines.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything logged while connections fail (refused, and rejected by the server) is free of
/// the password.
#[tokio::test]
async fn failing_connects_log_no_password() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer({
            let captured = captured.clone();
            move || captured.clone()
        })
        .finish();
    // The runtime of this test runs on this one thread, so the default covers it.
    let _default = tracing::subscriber::set_default(subscriber);
    tracing::info!("capture started");

    let (host, port) = test_server();
    let mut urls = urls_with_secret("127.0.0.1", refused_port(), "postgres");
    urls.extend(urls_with_secret(
        &host,
        port,
        "eventsource_no_such_database",
    ));
    for url in &urls {
        let (error, _) = failed_connect(url).await;
        tracing::warn!(%error, "connect failed");
    }

    let logged = String::from_utf8_lossy(&captured.0.lock().expect("log buffer")).into_owned();
    assert!(logged.contains("capture started"), "the capture works");
    assert!(logged.contains("connect failed"), "errors were logged");
    assert_no_secret("each form", &[logged]);
}

/// A `password` parameter in another case would be ignored by the driver (which logs its
/// value): it is refused, saying how to spell it.
#[tokio::test]
async fn a_password_parameter_in_another_case_is_refused() {
    let url = format!("postgres://postgres@127.0.0.1:5432/postgres?PassWord={ENCODED}");
    let (error, _) = failed_connect(&url).await;
    assert!(
        error.to_string().contains("spell it `password`"),
        "the error says what to do: {error}"
    );
}
