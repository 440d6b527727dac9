//! A docker engine shared by the tests of one test binary, and docker CLI handles with a
//! private `DOCKER_CONFIG` each (so `docker login` in one test never leaks into another,
//! nor touches the user's credentials).
//!
//! Uses the daemon at `$DOCKER_HOST` (or the default socket) when one answers; otherwise
//! starts a private `dockerd` (needs root) with its own data root, exec root, pid file and
//! socket under a temporary directory, trying `overlay2` then `vfs`. A static is never
//! dropped, so a small shell watchdog stops that `dockerd` and removes its directory once
//! the test process has exited.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const DOCKERD: &str = "/usr/sbin/dockerd";
/// Storage drivers to try, best first: `vfs` works where overlay mounts do not.
const DRIVERS: [&str; 2] = ["overlay2", "vfs"];
const START_TIMEOUT: Duration = Duration::from_secs(40);

/// The engine: the `unix://` address of a daemon that answers.
struct Engine {
    host: String,
}

static ENGINE: OnceLock<Engine> = OnceLock::new();

/// A docker CLI aimed at the shared engine, with its own config directory.
pub struct Docker {
    host: String,
    config: tempfile::TempDir,
}

impl Docker {
    /// Starts (once per process) or finds the engine; panics with the reason when no
    /// engine can run here — never a silent skip.
    #[allow(
        clippy::new_without_default,
        reason = "starting an engine is no default value"
    )]
    pub fn new() -> Docker {
        let engine = ENGINE.get_or_init(Engine::start);
        Docker {
            host: engine.host.clone(),
            config: tempfile::tempdir().unwrap(),
        }
    }

    /// This client's `DOCKER_CONFIG` (`config.json`, `trust/`, `tls/`).
    pub fn config_dir(&self) -> &Path {
        self.config.path()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker");
        cmd.args(args)
            .env("DOCKER_HOST", &self.host)
            .env("DOCKER_CONFIG", self.config.path())
            .stdin(Stdio::null());
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
            "docker {} failed:\n{}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `docker args...`, asserts failure, returns stdout and stderr together.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.output(args);
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "docker {} succeeded but should fail:\n{text}",
            args.join(" ")
        );
        text
    }

    /// `docker login HOST -u USER --password-stdin`; returns the command's output.
    pub fn login(&self, host: &str, user: &str, password: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .command(&["login", host, "-u", user, "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(password.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// `docker import` of a one-file tarball whose content is `content`: a distinct
    /// single-layer image per call with distinct content. Returns the local reference.
    pub fn import(&self, reference: &str, content: &str) -> String {
        let work = tempfile::tempdir().unwrap();
        let root = work.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("content.txt"), content).unwrap();
        let tarball = work.path().join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tarball)
            .arg("content.txt")
            .status()
            .unwrap();
        assert!(status.success(), "tar failed");
        self.run(&["import", tarball.to_str().unwrap(), reference]);
        reference.to_owned()
    }

    /// The local image ID of `reference`.
    pub fn image_id(&self, reference: &str) -> String {
        self.run(&["image", "inspect", "--format", "{{.Id}}", reference])
            .trim()
            .to_owned()
    }
}

impl Engine {
    fn start() -> Engine {
        let existing =
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
        if answers(&existing) {
            return Engine { host: existing };
        }
        let uid = Command::new("id").arg("-u").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "no docker engine answers at {existing} and starting dockerd needs root"
        );
        let mut failures = Vec::new();
        for driver in DRIVERS {
            // Short path: the socket path must fit in sockaddr_un (108 bytes). Kept (not
            // a TempDir): the watchdog removes it after the daemon stopped.
            let dir = tempfile::Builder::new()
                .prefix("pgw")
                .tempdir_in("/tmp")
                .unwrap()
                .keep();
            let host = format!("unix://{}/docker.sock", dir.display());
            let mut child = spawn_dockerd(&dir, driver);
            match wait_ready(&host, &mut child) {
                Ok(()) => {
                    spawn_watchdog(child.id(), &dir);
                    return Engine { host };
                }
                Err(why) => {
                    let log = log_tail(&dir.join("dockerd.log"));
                    stop(child);
                    let _ = std::fs::remove_dir_all(&dir);
                    failures.push(format!(
                        "storage driver {driver}: {why}; dockerd log tail:\n{log}"
                    ));
                }
            }
        }
        panic!("dockerd cannot run here:\n{}", failures.join("\n\n"));
    }
}

fn answers(host: &str) -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .env("DOCKER_HOST", host)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_ready(host: &str, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if answers(host) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("dockerd exited with {status}"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(format!(
        "docker info did not answer within {START_TIMEOUT:?}"
    ))
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

/// Once this process is gone: SIGTERM the daemon (it unmounts and stops its
/// containerd), SIGKILL after 30 s, then remove its directory.
fn spawn_watchdog(dockerd: u32, dir: &Path) {
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 1; done
         kill -TERM {dockerd} 2>/dev/null
         for _ in $(seq 300); do kill -0 {dockerd} 2>/dev/null || break; sleep 0.1; done
         kill -KILL {dockerd} 2>/dev/null
         sleep 0.5
         rm -rf '{dir}'",
        me = std::process::id(),
        dir = dir.display(),
    );
    #[allow(
        clippy::zombie_processes,
        reason = "the watchdog must outlive this process; init reaps it"
    )]
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}
