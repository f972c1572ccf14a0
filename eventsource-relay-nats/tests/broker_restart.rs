//! The NATS server restarted twice (SIGTERM, then SIGKILL) while the relay publishes and
//! writers append: the relay waits the outage out by itself and nothing is lost.
//!
//! In its own test binary: it stops the broker every other test uses. It restarts the local
//! server only (the one scripts/ensure-nats.sh starts), with the same store directory, so
//! JetStream's streams survive; a guard starts the server again if the test fails halfway.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{delete_streams, eventually, jetstream, relay_options, Names, Reader, RunningRelay};
use eventsource_core::{EventAppender, EventMetadata, ExpectedVersion, NewEvent, StreamId};
use eventsource_postgres::delivery_check::{check_delivery, stored_messages, write_concurrently};
use eventsource_postgres::testing::TestDatabase;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const LOCAL: &str = "127.0.0.1:4222";
const MAX_ROUNDS: usize = 40;

/// The pid of the running nats-server, if any.
fn server_pid() -> Option<u32> {
    let output = Command::new("pgrep")
        .args(["-x", "nats-server"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
}

fn answers() -> bool {
    let address: SocketAddr = LOCAL.parse().expect("the local address");
    TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok()
}

/// Starts the server as scripts/ensure-nats.sh does, and waits until it answers.
fn start_server() {
    let status = Command::new("start-stop-daemon")
        .args([
            "--start",
            "--oknodo",
            "--background",
            "--exec",
            "/usr/sbin/nats-server",
            "--",
            "-a",
            "127.0.0.1",
            "-p",
            "4222",
            "-js",
            "-sd",
            "/var/lib/nats-server",
            "-l",
            "/var/log/nats-server.log",
        ])
        .status()
        .expect("run start-stop-daemon");
    assert!(status.success(), "start-stop-daemon failed: {status}");
    let start = Instant::now();
    while !answers() {
        assert!(
            start.elapsed() < common::DEADLINE,
            "nats-server does not answer on {LOCAL}; see /var/log/nats-server.log"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops the server with `signal` and waits until its process is gone.
fn stop_server(signal: &str) {
    let pid = server_pid().expect("a running nats-server");
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
    let start = Instant::now();
    while server_pid() == Some(pid) {
        assert!(
            start.elapsed() < common::DEADLINE,
            "nats-server {pid} survived SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Leaves the server running, whatever happened to the test.
struct ServerGuard;

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if !answers() {
            if server_pid().is_none() {
                start_server();
            } else {
                let start = Instant::now();
                while !answers() && start.elapsed() < common::DEADLINE {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relay_rides_out_broker_restarts_and_loses_nothing() {
    let url = common::nats_url();
    if !url.ends_with(LOCAL) {
        eprintln!("skipped: NATS_URL={url} is not the local server this test may restart");
        return;
    }
    let _guard = ServerGuard;
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let names = Names::new("restart");
    let js = jetstream().await;
    common::create_stream(&js, &names.stream_setup()).await;
    let relay = RunningRelay::start(&store, "nats", names.publisher(), relay_options());

    let stop_writing = CancellationToken::new();
    let writers = tokio::spawn({
        let store = store.clone();
        let stop = stop_writing.clone();
        async move {
            let mut appended = 0;
            for round in 0..MAX_ROUNDS {
                if stop.is_cancelled() {
                    break;
                }
                appended += write_concurrently(&store, &format!("restart{round}"), 8, 2, 10)
                    .await
                    .expect("writers");
            }
            appended
        }
    });

    let mut probes = 0;
    for signal in ["TERM", "KILL"] {
        let before = relay.status.borrow().published;
        eventually("the relay to publish", || async {
            relay.status.borrow().published > before
        })
        .await;
        tokio::task::spawn_blocking(move || stop_server(signal))
            .await
            .expect("stop the server");
        // An event while the broker is down: the relay must try, and wait.
        let probe = StreamId::new("probe", format!("p{probes}")).expect("stream id");
        store
            .append(
                &probe,
                ExpectedVersion::NoStream,
                vec![NewEvent::new(
                    "Probed",
                    1,
                    json!({}),
                    EventMetadata::default(),
                )],
            )
            .await
            .expect("append a probe");
        probes += 1;
        let mut status = relay.status.clone();
        tokio::time::timeout(
            common::DEADLINE,
            status.wait_for(|s| s.broker_outage.is_some()),
        )
        .await
        .expect("the relay sees the outage")
        .expect("relay status");
        tokio::task::spawn_blocking(start_server)
            .await
            .expect("start the server");
    }

    stop_writing.cancel();
    let appended = writers.await.expect("the writers' task");
    let stored = stored_messages(&store).await.expect("stored events");
    assert_eq!(stored.len(), appended + probes);
    // A reader of its own from the first message (an ephemeral consumer would not survive the
    // restarts): every event must be in the stream.
    let stop_reading = CancellationToken::new();
    let reader = Reader::start(&names.stream, stop_reading.clone()).await;
    reader.wait_for(stored.len()).await;
    let mut status = relay.status.clone();
    tokio::time::timeout(
        common::DEADLINE,
        status.wait_for(|s| s.broker_outage.is_none()),
    )
    .await
    .expect("the outage clears")
    .expect("relay status");
    assert_eq!(
        status.borrow().activations,
        1,
        "the relay recovered without restarting"
    );
    relay.stop().await;
    stop_reading.cancel();

    let report = check_delivery(&stored, &reader.received());
    assert!(report.is_complete_and_ordered(), "{report:?}");
    // The stream keeps Nats-Msg-Ids across a restart: a wave resent after it is dropped.
    assert_eq!(report.duplicates, 0, "{report:?}");
    println!("{} events relayed across 2 broker restarts", stored.len());

    delete_streams(&js, &names).await;
    db.drop_database().await.expect("drop the test database");
}
