//! A PostgreSQL server for the tests: `WASAGA_TEST_POSTGRES` (a connection string) if
//! set, else a private cluster this process starts from the server binaries it finds
//! (`initdb` and `postgres` on the PATH or under /usr/lib/postgresql), on a Unix socket
//! in a temporary directory, stopped and removed when the process ends. Each test gets
//! a schema of its own, so tests run side by side on one server.
//!
//! Without either, the tests that need PostgreSQL fail and say how to get one: they
//! are not skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The connection string of the test server, started on first use.
pub fn server() -> &'static str {
    static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
    let server = SERVER.get_or_init(|| match std::env::var("WASAGA_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Ok(url),
        _ => start_private().map_err(|why| {
            format!(
                "the PostgreSQL tests need a server: {why}. Install PostgreSQL's server (Debian: \
                 apt-get install postgresql), or set WASAGA_TEST_POSTGRES to a connection string"
            )
        }),
    });
    match server {
        Ok(url) => url,
        Err(why) => panic!("{why}"),
    }
}

/// A connection string to a fresh, empty schema of the test server (the server's own
/// string, URL or `key=value`, with the schema as its search path).
pub async fn scratch() -> String {
    let base = server();
    let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
    let config: tokio_postgres::Config = base.parse().expect("WASAGA_TEST_POSTGRES is a connection string");
    let (client, connection) =
        config.connect(tokio_postgres::NoTls).await.expect("connecting to the test server");
    tokio::spawn(connection);
    client.batch_execute(&format!("CREATE SCHEMA {schema}")).await.expect("creating a test schema");
    if base.starts_with("postgres://") || base.starts_with("postgresql://") {
        let joint = if base.contains('?') { '&' } else { '?' };
        format!("{base}{joint}options=-c%20search_path%3D{schema}")
    } else {
        format!("{base} options='-c search_path={schema}'")
    }
}

/// Where a Debian-style install keeps the server binaries, newest version first.
fn binaries() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file());
    on_path.or_else(|| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
            .filter(|bin| bin.join("initdb").is_file())
            .collect();
        versions.sort_by_key(|bin| {
            bin.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()).unwrap_or(0)
        });
        versions.pop()
    })
}

fn start_private() -> Result<String, String> {
    Ok(PrivateServer::start()?.url())
}

/// A PostgreSQL cluster of this process's own, on a Unix socket in a temporary
/// directory; stopped and removed when the process ends.
#[derive(Debug)]
pub struct PrivateServer {
    bin: PathBuf,
    dir: PathBuf,
    /// Who runs it (as root: `postgres` or `nobody`; the server refuses root).
    user: Option<String>,
}

impl PrivateServer {
    /// Makes a cluster and starts it.
    pub fn start() -> Result<PrivateServer, String> {
        let bin = binaries().ok_or("no `initdb` and `postgres` on the PATH or under /usr/lib/postgresql")?;
        let dir = tempfile::Builder::new()
            .prefix("wasaga-test-postgres-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let server = PrivateServer { bin, dir, user: as_user() };
        if let Some(user) = &server.user {
            run(Command::new("chown").args(["-R", user]).arg(&server.dir))?;
        }
        run(server
            .command("initdb")
            .args(["--auth=trust", "--no-sync", "--username=postgres", "-D"])
            .arg(server.data()))?;
        watch(std::process::id(), &server.dir)?;
        server.launch()?;
        Ok(server)
    }

    /// Its connection string.
    pub fn url(&self) -> String {
        format!("host={} user=postgres dbname=postgres", self.dir.display())
    }

    /// Starts the server on its cluster (again), and waits until it accepts connections.
    pub fn launch(&self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .map_err(|e| e.to_string())?;
        // It runs on after this process: the watchdog stops it.
        self.command("postgres")
            .arg("-D")
            .arg(self.data())
            .arg("-k")
            .arg(&self.dir)
            // Tests need no durability, and many connections at once.
            .args(["-c", "listen_addresses=", "-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting postgres: {e}"))?;
        let started = Instant::now();
        // The pid file's eighth line says `ready` once connections are accepted (the
        // socket exists earlier, while the server still refuses them).
        let ready = || {
            std::fs::read_to_string(self.data().join("postmaster.pid"))
                .is_ok_and(|pid| pid.lines().nth(7).is_some_and(|status| status.trim() == "ready"))
        };
        while !ready() {
            if started.elapsed() > Duration::from_secs(30) {
                let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                return Err(format!("postgres did not start within 30 s; its log:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the server (a fast shutdown: sessions are ended) and waits until it is gone.
    pub fn stop(&self) -> Result<(), String> {
        let pid = std::fs::read_to_string(self.data().join("postmaster.pid")).map_err(|e| e.to_string())?;
        let pid = pid.lines().next().unwrap_or_default().trim().to_owned();
        run(Command::new("kill").args(["-INT", &pid]))?;
        let started = Instant::now();
        while Path::new(&format!("/proc/{pid}")).exists() {
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("postgres {pid} did not stop within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let mut command = match &self.user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(self.bin.join(program));
                c
            }
            None => Command::new(self.bin.join(program)),
        };
        command.stdin(Stdio::null());
        command
    }
}

/// Stops the server and removes its directory once this process is gone (it may end
/// without running any destructor). The postmaster's pid is read from its pid file: the
/// process this one started may be `runuser`, which does not pass signals on.
fn watch(test: u32, dir: &Path) -> Result<(), String> {
    let script = format!(
        "dir='{}'; while kill -0 {test} 2>/dev/null; do sleep 1; done; \
         server=$(head -n 1 \"$dir/data/postmaster.pid\" 2>/dev/null); \
         if [ -n \"$server\" ]; then kill -INT \"$server\"; \
           while kill -0 \"$server\" 2>/dev/null; do sleep 0.2; done; fi; rm -rf \"$dir\"",
        dir.display()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(|_| ())
        .map_err(|e| format!("starting the server's watchdog: {e}"))
}

fn as_user() -> Option<String> {
    let root = Command::new("id").arg("-u").output().ok().is_some_and(|out| out.stdout.trim_ascii() == b"0");
    if !root {
        return None;
    }
    let postgres =
        Command::new("id").arg("postgres").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    Some(if postgres { "postgres" } else { "nobody" }.to_owned())
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr)))
}
