//! A TCP proxy between a store and its server that a test can cut and restore: a network
//! outage or a server restart, for one test's connections only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sqlx::postgres::PgConnectOptions;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// Forwards connections to a PostgreSQL server until cut.
pub struct Proxy {
    port: u16,
    state: Arc<State>,
    accept: AbortHandle,
}

#[derive(Default)]
struct State {
    /// While set, new connections are accepted and dropped at once (the client sees the
    /// connection reset, as when a server goes away).
    refusing: AtomicBool,
    /// The forwarding tasks of the open connections.
    connections: Mutex<Vec<AbortHandle>>,
}

impl Proxy {
    /// Starts forwarding to the server of `options`.
    pub async fn start(options: &PgConnectOptions) -> Self {
        let target = format!("{}:{}", options.get_host(), options.get_port());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(State::default());
        let accepting = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if accepting.refusing.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(forward(client, target));
                accepting
                    .connections
                    .lock()
                    .expect("proxy state")
                    .push(task.abort_handle());
            }
        })
        .abort_handle();
        Self {
            port,
            state,
            accept,
        }
    }

    /// `options` pointed at this proxy.
    pub fn options(&self, options: &PgConnectOptions) -> PgConnectOptions {
        options.clone().host("127.0.0.1").port(self.port)
    }

    /// Drops every open connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.state.refusing.store(true, Ordering::SeqCst);
        for task in self
            .state
            .connections
            .lock()
            .expect("proxy state")
            .drain(..)
        {
            task.abort();
        }
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.state.refusing.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

async fn forward(mut client: TcpStream, target: String) {
    let Ok(mut server) = TcpStream::connect(&target).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
