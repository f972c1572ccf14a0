//! A throwaway PostgreSQL server for development and examples, started from the PostgreSQL
//! binaries installed on the machine when no server is reachable.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a local server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalServerError {
    /// No `initdb`/`pg_ctl` was found.
    #[error("no PostgreSQL server binaries found (looked in $PG_BIN_DIR, `pg_config --bindir`, /usr/lib/postgresql/*/bin and $PATH); install PostgreSQL or set DATABASE_URL to a running server")]
    BinariesNotFound,
    /// A command failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and output.
        detail: String,
    },
    /// A file system step failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A PostgreSQL server in a temporary directory, stopped and deleted on drop.
///
/// Starting runs `initdb` (trust authentication, user `postgres`) and `pg_ctl start` on a free
/// port on 127.0.0.1. When the process runs as root, both run as the `postgres` system user
/// through `runuser`, since PostgreSQL refuses to run as root. These are blocking calls of a
/// few seconds: from async code, call [`LocalServer::start`] inside
/// `tokio::task::spawn_blocking`.
#[derive(Debug)]
pub struct LocalServer {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    as_postgres_user: bool,
    port: u16,
}

impl LocalServer {
    /// Initialises and starts a new server.
    pub fn start() -> Result<Self, LocalServerError> {
        let bin_dir = find_bin_dir().ok_or(LocalServerError::BinariesNotFound)?;
        let as_postgres_user = running_as_root();
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let data_dir =
            std::env::temp_dir().join(format!("eventsource-pg-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&data_dir).map_err(|source| LocalServerError::Io {
            what: format!("create {}", data_dir.display()),
            source,
        })?;
        let port = free_port()?;
        let server = Self {
            bin_dir,
            data_dir,
            as_postgres_user,
            port,
        };
        if as_postgres_user {
            run(Command::new("chown").arg("postgres:").arg(&server.data_dir))?;
        }
        let pgdata = server.data_dir.join("data");
        server.run_pg(
            "initdb",
            &[
                "-D".as_ref(),
                pgdata.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        // Prepared transactions on, so two-phase commits (and the tests that hold an append
        // prepared) work.
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=200 \
             -c max_prepared_transactions=64",
            server.port,
            server.data_dir.display()
        );
        let log = server.data_dir.join("server.log");
        server.run_pg(
            "pg_ctl",
            &[
                "start".as_ref(),
                "-w".as_ref(),
                "-D".as_ref(),
                pgdata.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-l".as_ref(),
                log.as_os_str(),
            ],
        )?;
        Ok(server)
    }

    /// The URL of the server's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The directory holding the server's data and log.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn run_pg(&self, program: &str, args: &[&std::ffi::OsStr]) -> Result<Output, LocalServerError> {
        let path = self.bin_dir.join(program);
        let mut command = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        command.args(args).current_dir(&self.data_dir);
        run(&mut command)
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let pgdata = self.data_dir.join("data");
        let stopped = self.run_pg(
            "pg_ctl",
            &[
                "stop".as_ref(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "-D".as_ref(),
                pgdata.as_os_str(),
            ],
        );
        if let Err(e) = stopped {
            tracing::warn!(error = %e, "could not stop the local PostgreSQL server");
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn run(command: &mut Command) -> Result<Output, LocalServerError> {
    let line = format!("{command:?}");
    let output = command.output().map_err(|source| LocalServerError::Io {
        what: format!("run {line}"),
        source,
    })?;
    if output.status.success() {
        return Ok(output);
    }
    Err(LocalServerError::Command {
        command: line,
        detail: format!(
            "{}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}

/// Finds the directory holding `initdb` and `pg_ctl`.
fn find_bin_dir() -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("PG_BIN_DIR").map(PathBuf::from) {
        if has_tools(&dir) {
            return Some(dir);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_tools(&dir) {
            return Some(dir);
        }
    }
    // Debian and Ubuntu keep server binaries out of PATH, one directory per major version.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_tools(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).find(|d| has_tools(d)))
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> Result<u16, LocalServerError> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| LocalServerError::Io {
            what: "find a free port".into(),
            source,
        })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| LocalServerError::Io {
            what: "find a free port".into(),
            source,
        })
}
