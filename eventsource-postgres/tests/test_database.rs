//! `TestDatabase::create` against a server that is down: it fails within seconds, naming the
//! server, instead of waiting out the pool's acquire timeout.
//!
//! The only test of this binary, since it points `DATABASE_URL` at a refused port for the whole
//! process.

use std::time::{Duration, Instant};

use eventsource_postgres::testing::TestDatabase;

#[tokio::test]
async fn create_reports_a_refused_server_at_once() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        listener.local_addr().expect("local address").port()
    };
    std::env::set_var(
        "DATABASE_URL",
        format!("postgres://postgres:S3cr3t-PW@127.0.0.1:{port}/postgres"),
    );
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(60), TestDatabase::create())
        .await
        .expect("create gives up");
    let took = started.elapsed();
    let error = match result {
        Ok(db) => panic!("created {db:?} on a refused port"),
        Err(error) => error,
    };
    let message = error.to_string();
    assert!(took < Duration::from_secs(5), "took {took:?}: {message}");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(message.contains("DATABASE_URL"), "{message}");
    assert!(
        !format!("{message} {error:?}").contains("S3cr3t"),
        "{message}"
    );
}
