//! A docker engine for the client tests. Uses the daemon at `$DOCKER_HOST` (or
//! the default socket) when one answers; otherwise starts a private `dockerd`
//! (needs root) with its own data root, exec root, pid file and socket under a
//! temporary directory, and stops it when dropped. The docker CLI always runs
//! with a private `DOCKER_CONFIG`, so tests never touch the user's credentials.
//!
//! Declared from a test crate with `#[path = "common/docker.rs"] mod docker;`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const DOCKERD: &str = "/usr/sbin/dockerd";
/// Storage drivers to try, best first: `vfs` works where overlay mounts do not.
const DRIVERS: [&str; 2] = ["overlay2", "vfs"];
const START_TIMEOUT: Duration = Duration::from_secs(40);

pub struct Docker {
    /// `unix:///...` address of the daemon.
    host: String,
    config: tempfile::TempDir,
    daemon: Option<Daemon>,
}

/// A `dockerd` this harness started.
struct Daemon {
    child: Child,
    /// Socket, roots and log; removed after the daemon stopped.
    dir: tempfile::TempDir,
}

impl Docker {
    /// Connects to a running engine or starts one; panics with the reason (and
    /// the daemon's log) when no engine can run here — never a silent skip.
    pub fn start() -> Docker {
        let config = tempfile::tempdir().unwrap();
        let existing =
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
        let mut docker = Docker {
            host: existing,
            config,
            daemon: None,
        };
        if docker.answers() {
            return docker;
        }
        let uid = Command::new("id").arg("-u").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "no docker engine answers at {} and starting dockerd needs root",
            docker.host
        );
        let mut failures = Vec::new();
        for driver in DRIVERS {
            // Short path: the socket path must fit in sockaddr_un (108 bytes).
            let dir = tempfile::Builder::new()
                .prefix("pdk")
                .tempdir_in("/tmp")
                .unwrap();
            docker.host = format!("unix://{}/docker.sock", dir.path().display());
            let child = spawn_dockerd(dir.path(), driver);
            docker.daemon = Some(Daemon { child, dir });
            match docker.wait_ready() {
                Ok(()) => return docker,
                Err(why) => {
                    let daemon = docker.daemon.take().unwrap();
                    let log = log_tail(&daemon.dir.path().join("dockerd.log"));
                    daemon.stop();
                    failures.push(format!(
                        "storage driver {driver}: {why}; dockerd log tail:\n{log}"
                    ));
                }
            }
        }
        panic!("dockerd cannot run here:\n{}", failures.join("\n\n"));
    }

    /// A `docker` command aimed at this engine.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker");
        cmd.args(args)
            .env("DOCKER_HOST", &self.host)
            .env("DOCKER_CONFIG", self.config.path());
        cmd
    }

    pub fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run docker CLI")
    }

    /// Runs `docker args...`, asserts success, returns stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "docker {} failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn answers(&self) -> bool {
        self.output(&["info", "--format", "{{.ServerVersion}}"])
            .status
            .success()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self.answers() {
                return Ok(());
            }
            let daemon = self.daemon.as_mut().unwrap();
            if let Ok(Some(status)) = daemon.child.try_wait() {
                return Err(format!("dockerd exited with {status}"));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(format!(
            "docker info did not answer within {START_TIMEOUT:?}"
        ))
    }
}

fn spawn_dockerd(dir: &Path, driver: &str) -> Child {
    let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
    let p = |name: &str| -> PathBuf { dir.join(name) };
    Command::new(DOCKERD)
        .arg("--data-root")
        .arg(p("data"))
        .arg("--exec-root")
        .arg(p("exec"))
        .arg("--pidfile")
        .arg(p("dockerd.pid"))
        .arg("-H")
        .arg(format!("unix://{}", p("docker.sock").display()))
        .args([
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--storage-driver",
            driver,
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {DOCKERD}: {e}"))
}

fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

impl Daemon {
    /// SIGTERM (dockerd unmounts and stops its containerd), SIGKILL after 30 s.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.stop();
        }
    }
}
