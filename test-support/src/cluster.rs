//! N gateways as one registry (issue 18): a PostgreSQL server of its own (metadata and
//! control plane in one database), blobs under a fresh prefix of this binary's SeaweedFS,
//! [`GATEWAYS`] `portcullis serve` processes on fixed loopback ports (each its own data
//! directory, the same admin password and trust-key passphrase), and HAProxy in front,
//! run on `deploy/haproxy.cfg` itself with loopback addresses in its environment.
//!
//! A test kills and restarts a gateway ([`Cluster::kill`], [`Cluster::restart`]; it comes
//! back on its port), restarts PostgreSQL ([`Cluster::restart_postgres`]), watches
//! HAProxy's view of the gateways ([`Cluster::wait_in_rotation`]), and drives a
//! sustained push and pull load of docker clients through HAProxy ([`Load`]).
//!
//! One cluster runs at a time in a test process (a [`Cluster`] holds a lock): five
//! servers and a load are about what these machines run well at once.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::backend::Storage;
use crate::content;
use crate::docker::Docker;
use crate::gateway::{ADMIN_PASSWORD, Server};
use crate::oci::{DOCKER_MANIFEST, OCI_MANIFEST};
use crate::postgres::Postgres;
use crate::seaweedfs::SeaweedFs;

/// Gateways in a cluster.
pub const GATEWAYS: usize = 3;
/// HAProxy from Debian's `haproxy`.
pub const HAPROXY: &str = "/usr/sbin/haproxy";
/// HAProxy's configuration, shared with operators.
pub fn haproxy_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/haproxy.cfg")
}

/// How long a gateway may take to enter or leave HAProxy's rotation (checks every
/// second, two to change state).
const ROTATION_TIMEOUT: Duration = Duration::from_secs(30);

/// One cluster at a time per process.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A running cluster; everything stops on drop.
pub struct Cluster {
    // Dropped in this order: gateways first, the servers they use after.
    members: Vec<Member>,
    haproxy: Haproxy,
    postgres: Postgres,
    storage: Storage,
    /// `postgres://…` of the database of the metadata and the control plane.
    database: String,
    passphrase_file: PathBuf,
    /// Data directories and logs; removed once the servers stopped.
    _dir: tempfile::TempDir,
    _one: MutexGuard<'static, ()>,
}

struct Member {
    /// `127.0.0.1:PORT`, kept across restarts.
    addr: String,
    data_dir: PathBuf,
    server: Option<Server>,
}

impl Cluster {
    /// Starts PostgreSQL, the gateways and HAProxy; returns once HAProxy has every
    /// gateway in rotation.
    pub fn start() -> Cluster {
        // A test that failed while holding the lock poisoned it; the cluster it held is
        // gone all the same.
        let one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        // PORTCULLIS_CLUSTER_KEEP=1 keeps the data directories and the gateways' and
        // HAProxy's logs for a post-mortem.
        let keep = std::env::var_os("PORTCULLIS_CLUSTER_KEEP").is_some();
        let dir = tempfile::Builder::new()
            .prefix("cluster")
            .disable_cleanup(keep)
            .tempdir()
            .expect("temporary directory");
        if keep {
            println!("cluster files kept in {}", dir.path().display());
        }
        let postgres = Postgres::start();
        let database = postgres.database();
        let storage = Storage::default()
            .s3(SeaweedFs::shared().target())
            .postgres(database.clone());
        // Every gateway must unlock the same sealed secrets in the shared control plane.
        let passphrase_file = dir.path().join("trust-key-passphrase");
        std::fs::write(&passphrase_file, "cluster test passphrase, shared by all\n")
            .expect("passphrase file");
        let mut members: Vec<Member> = free_ports(GATEWAYS)
            .into_iter()
            .enumerate()
            .map(|(i, port)| Member {
                addr: format!("127.0.0.1:{port}"),
                data_dir: dir.path().join(format!("gateway-{}", i + 1)),
                server: None,
            })
            .collect();
        members[0].start(&storage, &database, &passphrase_file);
        if let Some(first) = members[0].server.take() {
            first.stop();
        }
        share_first_gateways_state(&members);
        for member in &mut members {
            member.start(&storage, &database, &passphrase_file);
        }
        let addrs: Vec<&str> = members.iter().map(|m| m.addr.as_str()).collect();
        let haproxy = Haproxy::start(dir.path(), &addrs);
        let cluster = Cluster {
            members,
            haproxy,
            postgres,
            storage,
            database,
            passphrase_file,
            _dir: dir,
            _one: one,
        };
        for i in 0..GATEWAYS {
            cluster.wait_in_rotation(i, true);
        }
        cluster
    }

    /// The running gateway `i` (0-based); panics when it is killed.
    pub fn gateway(&self, i: usize) -> &Server {
        self.members[i]
            .server
            .as_ref()
            .unwrap_or_else(|| panic!("gateway {i} is not running"))
    }

    /// `127.0.0.1:PORT` of gateway `i`, running or not.
    pub fn gateway_host(&self, i: usize) -> &str {
        &self.members[i].addr
    }

    /// `http://127.0.0.1:PORT` of gateway `i`.
    pub fn gateway_url(&self, i: usize) -> String {
        format!("http://{}", self.members[i].addr)
    }

    /// `127.0.0.1:PORT` of HAProxy: the registry host clients name images with.
    pub fn host(&self) -> &str {
        &self.haproxy.addr
    }

    /// `http://127.0.0.1:PORT` of HAProxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.haproxy.addr)
    }

    /// The admin account's password on every gateway.
    pub fn admin_password(&self) -> &'static str {
        ADMIN_PASSWORD
    }

    /// `postgres://…` of the database every gateway shares (metadata and control plane).
    pub fn database_url(&self) -> &str {
        &self.database
    }

    /// The PostgreSQL server (its log, a stop without restart).
    pub fn postgres(&self) -> &Postgres {
        &self.postgres
    }

    /// `kill -9` of gateway `i`; returns once the process is gone.
    pub fn kill(&mut self, i: usize) {
        let mut server = self.members[i]
            .server
            .take()
            .unwrap_or_else(|| panic!("gateway {i} is not running"));
        server.kill();
    }

    /// Starts gateway `i` (killed, or never started) on its address and data directory;
    /// returns once it listens (see [`Cluster::wait_in_rotation`] for HAProxy's view).
    pub fn restart(&mut self, i: usize) {
        self.members[i].start(&self.storage, &self.database, &self.passphrase_file);
    }

    /// Stops PostgreSQL at once (as a crash looks to clients), waits `down`, starts it
    /// again on the same port and data.
    pub fn restart_postgres(&self, down: Duration) {
        self.postgres.stop();
        std::thread::sleep(down);
        self.postgres.restart();
    }

    /// Until HAProxy has gateway `i` in rotation (`true`: UP) or out of it (`false`).
    pub fn wait_in_rotation(&self, i: usize, up: bool) {
        let deadline = Instant::now() + ROTATION_TIMEOUT;
        loop {
            let server = self.haproxy.server(i);
            if (server.status == "UP") == up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway {i} still {} in HAProxy after {ROTATION_TIMEOUT:?}; HAProxy log:\n{}",
                server.status,
                self.haproxy.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// HAProxy's view of gateway `i` now.
    pub fn balancer_view(&self, i: usize) -> BalancedServer {
        self.haproxy.server(i)
    }

    /// HAProxy's process id (the child of the shell that stops it).
    pub fn haproxy_pid(&self) -> u32 {
        let shell = self.haproxy.child.id();
        let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
            .expect("children of the haproxy shell");
        children
            .split_whitespace()
            .next()
            .and_then(|pid| pid.parse().ok())
            .expect("haproxy runs")
    }
}

impl Member {
    /// `portcullis serve` on this member's address and data directory, on the shared
    /// storage and control plane.
    fn start(&mut self, storage: &Storage, database: &str, passphrase_file: &Path) {
        assert!(self.server.is_none(), "{} is already running", self.addr);
        let passphrase_file = passphrase_file.display().to_string();
        let args = [
            "--listen",
            &self.addr,
            "--trust-key-passphrase-file",
            &passphrase_file,
        ];
        // The control plane through its variable, which builds from before the setting
        // ignore: `scripts/bench-cluster` may measure such a release build.
        let env = [("PORTCULLIS_CONTROL_PLANE", database)];
        self.server = Some(storage.serve(&self.data_dir, Some(ADMIN_PASSWORD), &args, &env));
    }
}

/// Until the control plane lives in PostgreSQL (issue 18: the shared key ring, the admin
/// password record), each gateway signs bearer tokens with the key in its data directory
/// and binds the admin's tokens to the password record in its `control.redb`. The first
/// gateway's (started once, then stopped) are copied into the others before they first
/// start, so a token from one is good on all. This goes when the shared control plane
/// lands.
fn share_first_gateways_state(members: &[Member]) {
    for file in ["token-signing-key.pem", "control.redb"] {
        let first = members[0].data_dir.join(file);
        if !first.exists() {
            // Already in the shared control plane.
            continue;
        }
        for member in &members[1..] {
            std::fs::create_dir_all(&member.data_dir).expect("data directory");
            std::fs::copy(&first, member.data_dir.join(file))
                .unwrap_or_else(|e| panic!("copy {}: {e}", first.display()));
        }
    }
}

/// One gateway as HAProxy sees it (a row of its stats CSV).
#[derive(Debug, Clone)]
pub struct BalancedServer {
    /// `UP`, `DOWN`, `UP 1/2` (going down), `DOWN 1/2` (going up), ...
    pub status: String,
    /// Connections HAProxy has made to it so far.
    pub sessions: u64,
    /// Requests in flight on it now.
    pub current: u64,
    /// Times HAProxy retried a request or connection on it (`wretr`), and sent a request
    /// meant for it to another gateway instead (`wredis`).
    pub retried: u64,
    pub redispatched: u64,
}

/// `haproxy -db -f deploy/haproxy.cfg` under a shell that stops it when this process
/// ends however it ends (its stdin closes).
struct Haproxy {
    addr: String,
    stats: String,
    stdin: Option<ChildStdin>,
    child: Child,
    log: PathBuf,
}

impl Haproxy {
    /// On `gateways` (`127.0.0.1:PORT` each, [`GATEWAYS`] of them).
    fn start(dir: &Path, gateways: &[&str]) -> Haproxy {
        assert!(
            Path::new(HAPROXY).exists(),
            "{HAPROXY} is missing: scripts/install-test-deps.sh installs Debian's haproxy"
        );
        let ports = free_ports(2);
        let addr = format!("127.0.0.1:{}", ports[0]);
        let stats = format!("127.0.0.1:{}", ports[1]);
        let log = dir.join("haproxy.log");
        let out = std::fs::File::create(&log).expect("haproxy log");
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(r#""$0" "$@" </dev/null & h=$!; read _; kill $h; wait $h"#)
            .arg(HAPROXY)
            .arg("-db")
            .arg("-f")
            .arg(haproxy_config())
            .env("PORTCULLIS_LB_BIND", &addr)
            .env("PORTCULLIS_LB_STATS_BIND", &stats)
            .stdin(Stdio::piped())
            .stdout(out.try_clone().expect("haproxy log"))
            .stderr(out);
        for (n, gateway) in gateways.iter().enumerate() {
            command.env(format!("PORTCULLIS_GATEWAY_{}", n + 1), gateway);
        }
        let mut child = command.spawn().expect("spawn haproxy");
        let stdin = child.stdin.take();
        let haproxy = Haproxy {
            addr,
            stats,
            stdin,
            child,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while haproxy.servers().is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy did not start: {}",
                haproxy.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        haproxy
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every gateway's row of the stats CSV, `gw1` first.
    fn servers(&self) -> Result<Vec<BalancedServer>, String> {
        let csv = reqwest::blocking::get(format!("http://{}/stats;csv", self.stats))
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.text())
            .map_err(|e| e.to_string())?;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .ok_or("empty stats")?
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .ok_or(format!("no {name} column in the stats"))
        };
        let (proxy, server, status) = (column("pxname")?, column("svname")?, column("status")?);
        let (sessions, current, retried, redispatched) = (
            column("stot")?,
            column("scur")?,
            column("wretr")?,
            column("wredis")?,
        );
        let rows: HashMap<String, BalancedServer> = lines
            .map(|line| line.split(',').collect::<Vec<&str>>())
            .filter(|f| f.get(proxy) == Some(&"gateways"))
            .filter_map(|f| {
                Some((
                    (*f.get(server)?).to_owned(),
                    BalancedServer {
                        status: (*f.get(status)?).to_owned(),
                        sessions: f.get(sessions)?.parse().ok()?,
                        current: f.get(current)?.parse().ok()?,
                        retried: f.get(retried)?.parse().ok()?,
                        redispatched: f.get(redispatched)?.parse().ok()?,
                    },
                ))
            })
            .collect();
        (1..=GATEWAYS)
            .map(|n| {
                rows.get(&format!("gw{n}"))
                    .cloned()
                    .ok_or(format!("no gw{n} in the stats"))
            })
            .collect()
    }

    fn server(&self, i: usize) -> BalancedServer {
        match self.servers() {
            Ok(mut servers) => servers.swap_remove(i),
            Err(why) => panic!("haproxy stats: {why}; log:\n{}", self.log()),
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// `n` distinct free loopback ports (bound at once, then released: a small race with
/// other processes, acceptable on loopback in tests).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// Operations of one kind a [`Load`] ran.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub attempted: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Operations in which docker retried a transfer (and then succeeded or failed).
    pub retried: u64,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Counts {
            attempted,
            succeeded,
            failed,
            retried,
        } = self;
        write!(
            f,
            "{attempted} attempted, {succeeded} succeeded, {failed} failed \
             ({retried} with docker's own retries)"
        )
    }
}

/// One client operation of a [`Load`].
#[derive(Debug, Clone)]
pub struct Operation {
    /// A push (else a pull).
    pub push: bool,
    pub started: Instant,
    pub succeeded: bool,
    /// Docker retried a transfer in it.
    pub retried: bool,
    /// What docker printed when it failed.
    pub failure: Option<String>,
}

/// What a [`Load`] saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub operations: Vec<Operation>,
    /// `(repository:tag, manifest digest)` of every push the client saw acknowledged.
    pub acknowledged: Vec<(String, String)>,
}

impl LoadReport {
    /// The pushes (`push`) or pulls started at or after `since` (all: `None`).
    pub fn counts(&self, push: bool, since: Option<Instant>) -> Counts {
        let mut counts = Counts::default();
        for op in &self.operations {
            if op.push != push || since.is_some_and(|t| op.started < t) {
                continue;
            }
            counts.attempted += 1;
            counts.succeeded += u64::from(op.succeeded);
            counts.failed += u64::from(!op.succeeded);
            counts.retried += u64::from(op.retried);
        }
        counts
    }

    /// What docker said of each failed operation.
    pub fn failures(&self) -> impl Iterator<Item = &str> {
        self.operations
            .iter()
            .filter_map(|op| op.failure.as_deref())
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pushes: {}; pulls: {}",
            self.counts(true, None),
            self.counts(false, None)
        )
    }
}

/// A sustained load of docker clients against one registry host, as the admin: each
/// pusher pushes a fresh image (distinct content each time) to `load/pushN:M`, each
/// puller pulls its own seeded image `load/baseN:v1` and checks its image ID; both in a
/// loop until [`Load::stop`], a second's pause after a failure (as a user would try
/// again). Failures are what docker reports after retrying by its own rules (a layer
/// transfer up to five times; not a manifest).
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<LoadReport>>,
}

impl Load {
    /// Logs `pushers + pullers` docker clients in to `host` and seeds the pullers'
    /// images through it, then starts the clients. Each image is one layer holding a file
    /// of `file_bytes` pseudo-random text.
    pub fn start(host: &str, pushers: usize, pullers: usize, file_bytes: usize) -> Load {
        let client = |what: &str| {
            let docker = Docker::new();
            let out = docker.login(host, "admin", ADMIN_PASSWORD);
            assert!(
                out.status.success(),
                "docker login {host} ({what}): {out:?}"
            );
            docker
        };
        let text = move |seed: u64| hex::encode(content::pseudo_random(seed, file_bytes / 2));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for n in 0..pushers {
            let docker = client("pusher");
            let (stop, host) = (stop.clone(), host.to_owned());
            threads.push(std::thread::spawn(move || {
                let mut report = LoadReport::default();
                for m in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let target = format!("load/push{n}:{m}");
                    let reference = format!("{host}/{target}");
                    docker.import(&reference, &text(1000 * (n as u64 + 1) + m));
                    let started = Instant::now();
                    let out = docker.output(&["push", &reference]);
                    if let Some(digest) = report.record(true, started, &out, None) {
                        report.acknowledged.push((target, digest));
                    }
                    docker.run(&["rmi", &reference]);
                }
                report
            }));
        }
        for n in 0..pullers {
            let docker = client("puller");
            let reference = format!("{host}/load/base{n}:v1");
            docker.import(&reference, &text(n as u64));
            let id = docker.image_id(&reference);
            docker.run(&["push", &reference]);
            docker.run(&["rmi", &reference]);
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut report = LoadReport::default();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let out = docker.output(&["pull", &reference]);
                    let check = || {
                        let pulled = docker.image_id(&reference);
                        docker.run(&["rmi", &reference]);
                        (pulled != id).then(|| format!("image {pulled}, pushed {id}"))
                    };
                    report.record(false, started, &out, Some(&check));
                }
                report
            }));
        }
        Load { stop, threads }
    }

    /// Stops the clients (each finishes its operation) and gathers what they saw.
    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = LoadReport::default();
        for thread in self.threads {
            let mut client = thread.join().expect("load client thread");
            report.operations.append(&mut client.operations);
            report.acknowledged.append(&mut client.acknowledged);
        }
        report.operations.sort_by_key(|op| op.started);
        report
    }
}

impl LoadReport {
    /// Records one docker push or pull that began at `started`, checked (when it
    /// succeeded) by `check` (what differs, if anything); on success, the digest docker
    /// printed. A failure pauses the client for a second.
    fn record(
        &mut self,
        push: bool,
        started: Instant,
        out: &std::process::Output,
        check: Option<&dyn Fn() -> Option<String>>,
    ) -> Option<String> {
        let stdout = String::from_utf8_lossy(&out.stdout);
        // `v1: digest: sha256:… size: N` (push), `Digest: sha256:…` (pull).
        let digest = stdout
            .split_whitespace()
            .find(|word| word.starts_with("sha256:"))
            .map(str::to_owned);
        let failure = match &digest {
            Some(_) if out.status.success() => check.and_then(|check| check()),
            _ => Some(format!(
                "{}{}",
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        };
        let what = if push { "push" } else { "pull" };
        self.operations.push(Operation {
            push,
            started,
            succeeded: failure.is_none(),
            retried: stdout.contains("Retrying in"),
            failure: failure.as_ref().map(|why| format!("{what}: {why}")),
        });
        if failure.is_some() {
            std::thread::sleep(Duration::from_secs(1));
            return None;
        }
        digest
    }
}

/// `repository:tag` at the gateway `base` (`http://…`) is exactly what was pushed: its
/// manifest has `digest`, and every blob it references has the digest and size the
/// manifest gives, as the admin reads them; the difference when not.
pub fn check_exact(base: &str, reference: &str, digest: &str) -> Result<(), String> {
    let (repository, tag) = reference
        .rsplit_once(':')
        .ok_or(format!("{reference} has no tag"))?;
    let http = crate::client();
    let get = |path: &str| -> Result<Vec<u8>, String> {
        let url = format!("{base}/v2/{repository}/{path}");
        let resp = http
            .get(&url)
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .header("accept", format!("{DOCKER_MANIFEST}, {OCI_MANIFEST}"))
            .send()
            .map_err(|e| format!("GET {url}: {e}"))?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(format!("GET {url}: {}", resp.status()));
        }
        resp.bytes()
            .map(|b| b.to_vec())
            .map_err(|e| format!("GET {url}: {e}"))
    };
    let manifest = get(&format!("manifests/{tag}"))?;
    if content::digest(&manifest) != digest {
        return Err(format!("{reference} at {base} is not {digest}"));
    }
    let manifest: serde_json::Value = serde_json::from_slice(&manifest)
        .map_err(|e| format!("{reference} at {base}: manifest: {e}"))?;
    let blobs = std::iter::once(&manifest["config"])
        .chain(manifest["layers"].as_array().into_iter().flatten());
    for blob in blobs {
        let (Some(want), Some(size)) = (blob["digest"].as_str(), blob["size"].as_u64()) else {
            return Err(format!("{reference} at {base}: descriptor {blob}"));
        };
        let got = get(&format!("blobs/{want}"))?;
        if content::digest(&got) != want || got.len() as u64 != size {
            return Err(format!("{reference} at {base}: blob {want} differs"));
        }
    }
    Ok(())
}
