//! Finding a PostgreSQL server for the example: `DATABASE_URL`, else the local default, else a
//! throwaway server started from the installed binaries.

use std::time::Duration;

use eventsource::postgres::{LocalServer, PostgresStore, DEFAULT_DATABASE_URL};

/// A connected, migrated store, and the throwaway server behind it if one had to be started
/// (it stops when dropped).
pub struct Database {
    pub store: PostgresStore,
    pub url: String,
    pub local_server: Option<LocalServer>,
}

/// Connects to `url`, or to `DATABASE_URL`, or to the local default; when none answers, starts
/// a throwaway server and says so.
pub async fn connect(url: Option<String>) -> Result<Database, Box<dyn std::error::Error>> {
    let explicit = url.or_else(|| std::env::var("DATABASE_URL").ok());
    let url = explicit
        .clone()
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
    match tokio::time::timeout(Duration::from_secs(5), PostgresStore::connect(&url)).await {
        Ok(Ok(store)) => {
            store.migrate().await?;
            return Ok(Database {
                store,
                url,
                local_server: None,
            });
        }
        Ok(Err(e)) if explicit.is_some() => return Err(e.into()),
        Err(_) if explicit.is_some() => return Err(format!("{url} did not answer in 5 s").into()),
        Ok(Err(e)) => println!("No PostgreSQL server at {DEFAULT_DATABASE_URL} ({e})."),
        Err(_) => println!("No PostgreSQL server answered at {DEFAULT_DATABASE_URL} within 5 s."),
    }
    println!("Starting a throwaway PostgreSQL server from the installed binaries...");
    let server = tokio::task::spawn_blocking(LocalServer::start).await??;
    let url = server.url();
    println!(
        "Started a throwaway server at {url} (data in {}); it stops when the example ends.",
        server.data_dir().display()
    );
    let store = PostgresStore::connect(&url).await?;
    store.migrate().await?;
    Ok(Database {
        store,
        url,
        local_server: Some(server),
    })
}
