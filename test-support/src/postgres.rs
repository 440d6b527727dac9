//! A real PostgreSQL 15 server for tests (Debian's `postgresql-15`): `initdb` and `pg_ctl`
//! in a temporary directory, a free loopback port, `listen_addresses=127.0.0.1`, the unix
//! socket in the temporary directory, trust authentication (loopback only).
//!
//! PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user
//! (`runuser`). [`Postgres::shared`] starts one server per test binary and each test asks
//! it for a fresh database ([`Postgres::database`]); a test that stops its server starts
//! its own ([`Postgres::start`]). A server is stopped on drop, and a watcher process stops
//! it when the test process ends however it ends (the shared one is never dropped).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where Debian installs PostgreSQL 15's server binaries; `PORTCULLIS_TEST_PG_BIN`
/// overrides it.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running PostgreSQL server; stopped on drop.
pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    options: String,
    pub port: u16,
    /// Stops the server when its stdin closes (this value dropped, or the process gone).
    watcher: Option<Child>,
    tmp: tempfile::TempDir,
}

fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
    })
}

impl Postgres {
    /// The server of this test binary, started on first use.
    pub fn shared() -> &'static Postgres {
        static SHARED: OnceLock<Postgres> = OnceLock::new();
        SHARED.get_or_init(Postgres::start)
    }

    /// Starts a server of its own.
    pub fn start() -> Postgres {
        let bin = std::env::var_os("PORTCULLIS_TEST_PG_BIN")
            .map_or_else(|| PathBuf::from(PG_BIN), PathBuf::from);
        assert!(
            bin.join("postgres").exists(),
            "{} is missing: install Debian's postgresql-15 (scripts/install-test-deps.sh)",
            bin.join("postgres").display()
        );
        let tmp = tempfile::tempdir().expect("temporary directory");
        if running_as_root() {
            let status = Command::new("chown")
                .arg("postgres:")
                .arg(tmp.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown postgres: {}", tmp.path().display());
        }
        let data = tmp.path().join("data");
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("port")
            .port();
        // fsync off: only an OS crash loses data then, and tests stop the server, never
        // the machine (commits stay synchronous, so an immediate stop loses none).
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c full_page_writes=off -c max_connections=300",
            tmp.path().display()
        );
        let mut pg = Postgres {
            bin,
            data,
            options,
            port,
            watcher: None,
            tmp,
        };
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data.display().to_string(),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        pg.restart();
        // The watcher outlives a test process killed or ended without drops: its stdin
        // closes with the process, and it stops the server.
        let watcher = pg
            .command("sh")
            .arg("-c")
            .arg(r#"cat >/dev/null; "$0" -D "$1/data" stop -m immediate >/dev/null 2>&1; rm -rf "$1""#)
            .arg(pg.bin.join("pg_ctl"))
            .arg(pg.tmp.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning the watcher");
        pg.watcher = Some(watcher);
        pg
    }

    /// `program` (a PostgreSQL binary, or a path) as the user that owns the data.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self
            .command(self.bin.join(tool))
            .args(args)
            .current_dir(self.tmp.path())
            .output()
            .unwrap_or_else(|e| panic!("running {tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("server.log")).unwrap_or_default()
    }

    /// Starts the (stopped) server again on the same port and data.
    pub fn restart(&self) {
        let data = self.data.display().to_string();
        let log = self.tmp.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &data,
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "-o",
                &self.options,
                "start",
            ],
        );
    }

    /// Stops the server at once (`-m immediate`: as a crash or a power cut looks to
    /// clients), keeping its data for [`Postgres::restart`].
    pub fn stop(&self) {
        let data = self.data.display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }

    /// A fresh, empty database; its URL.
    pub fn database(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", &name])
            .output()
            .expect("running createdb");
        assert!(
            out.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&name)
    }

    /// `postgres://postgres@127.0.0.1:PORT/<database>`
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

/// One value of `query` in the database at `url`, through `psql` (panics when it fails).
pub fn psql(url: &str, query: &str) -> String {
    let out = Command::new(std::path::Path::new(PG_BIN).join("psql"))
        .args(["-At", "-d", url, "-c", query])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql {query}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Closing the watcher's stdin makes it stop the server and remove the directory.
        if let Some(mut watcher) = self.watcher.take() {
            drop(watcher.stdin.take());
            let _ = watcher.wait();
        }
    }
}
