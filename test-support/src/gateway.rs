//! The real `portcullis` binary: `serve` on an ephemeral loopback port, and the CLI
//! against it as the admin.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use reqwest::blocking::RequestBuilder;

pub const ADMIN_PASSWORD: &str = "test-admin-password";

/// The `portcullis` binary: `$PORTCULLIS_GATEWAY_BIN` when set (a release build for a
/// benchmark), else the workspace's.
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Ok(path) = std::env::var("PORTCULLIS_GATEWAY_BIN") {
        return BIN.get_or_init(|| path);
    }
    crate::static_bin(&BIN, "portcullis")
}

/// A running `portcullis serve`; stopped (SIGTERM, then kill) on drop.
pub struct Server {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    pub stderr_path: PathBuf,
}

impl Server {
    /// Starts on 127.0.0.1:0 with `data_dir`; `admin_password` `None` leaves the variable
    /// unset so the server generates one.
    pub fn start(data_dir: &Path, admin_password: Option<&str>) -> Server {
        Server::start_with(data_dir, admin_password, &[])
    }

    /// Like [`Server::start`], with extra `serve` arguments (`--upstream URL`,
    /// `--policy-dir DIR`, ...).
    pub fn start_with(data_dir: &Path, admin_password: Option<&str>, extra: &[&str]) -> Server {
        Server::start_with_env(data_dir, admin_password, extra, &[])
    }

    /// Like [`Server::start_with`], with extra environment variables (`RUST_LOG` is
    /// `warn` unless given).
    pub fn start_with_env(
        data_dir: &Path,
        admin_password: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        Server::start_under(&[], data_dir, admin_password, extra, env)
    }

    /// Like [`Server::start_with_env`], run by `wrapper` (a command line the binary and
    /// its arguments are appended to, e.g. `prlimit --nofile=256:256 --`); empty: none.
    /// A `--listen ADDR` in `extra` replaces the ephemeral port (a restarted cluster
    /// member keeps its address).
    pub fn start_under(
        wrapper: &[&str],
        data_dir: &Path,
        admin_password: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        std::fs::create_dir_all(data_dir).unwrap();
        let stderr_path = data_dir.with_extension("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut cmd = match wrapper {
            [program, args @ ..] => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(bin());
                cmd
            }
            [] => Command::new(bin()),
        };
        cmd.arg("serve");
        if !extra.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env_remove("PORTCULLIS_ADMIN_PASSWORD")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(p) = admin_password {
            cmd.env("PORTCULLIS_ADMIN_PASSWORD", p);
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd.spawn().expect("spawn portcullis serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!("unexpected first line {line:?}; stderr:\n{err}")
            })
            .to_owned();
        Server {
            child,
            base,
            data_dir: data_dir.to_owned(),
            stderr_path,
        }
    }

    /// The process id (for its CPU time in `/proc/<pid>/stat`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap()
    }

    /// `kill -9`: no shutdown at all, as a crash or the OOM killer; returns once the
    /// process is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Graceful stop; returns once the process has exited (so its files are released).
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `127.0.0.1:PORT`: the registry host docker and skopeo name images with.
    pub fn host(&self) -> &str {
        self.base
            .split_once("://")
            .map_or(self.base.as_str(), |(_, host)| host)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// `rb` with the admin account's Basic credentials.
pub fn admin(rb: RequestBuilder) -> RequestBuilder {
    rb.basic_auth("admin", Some(ADMIN_PASSWORD))
}

/// A gateway in `dir/data` with the shipped example policy `prod-signed-by-release.cedar`
/// (`prod/*` serves only what the trusted identity `release` signed) and a token `puller`
/// that may pull and list everything, `extra` added to `serve`'s arguments: the gateway
/// and the puller's password.
pub fn start_with_release_policy(dir: &Path, extra: &[&str]) -> (Server, String) {
    let policies = dir.join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../policies/examples/prod-signed-by-release.cedar"),
        policies.join("prod-signed-by-release.cedar"),
    )
    .unwrap();
    let server = Server::start_with(
        &dir.join("data"),
        Some(ADMIN_PASSWORD),
        &[&["--policy-dir", policies.to_str().unwrap()], extra].concat(),
    );
    let puller = create_token(&server, "puller", "*", &["content/read", "metadata/read"]);
    (server, puller)
}

/// The JSON a successful CLI run printed (`Null` when it printed nothing); panics with
/// the run's output when it failed or printed something else.
pub fn json_output(args: &[&str], out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "portcullis {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "portcullis {}: output is not JSON ({e}): {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs the CLI as the admin, asserts success, returns its JSON output (or `Null` when it
/// printed none).
pub fn cli_json(server: &Server, args: &[&str]) -> serde_json::Value {
    json_output(args, &cli(server, args))
}

/// The arguments of `portcullis token create --name NAME --repository REPO ACTIONS...`.
pub fn token_create_args<'a>(
    name: &'a str,
    repository: &'a str,
    actions: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "token",
        "create",
        "--name",
        name,
        "--repository",
        repository,
    ];
    args.extend_from_slice(actions);
    args
}

/// `portcullis token create …` as the admin; returns password1.
pub fn create_token(server: &Server, name: &str, repository: &str, actions: &[&str]) -> String {
    password1(&cli_json(
        server,
        &token_create_args(name, repository, actions),
    ))
}

/// `password1` of what `portcullis token create` printed.
pub fn password1(created: &serde_json::Value) -> String {
    created["credentials"]["passwords"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "password1")
        .and_then(|p| p["value"].as_str())
        .unwrap_or_else(|| panic!("no password1 in {created}"))
        .to_owned()
}

/// `portcullis policy explain --token TOKEN --repository REPO --action ACTION` with
/// `extra` arguments, as a table: what it printed (panics when it failed).
pub fn explain_table(
    server: &Server,
    token: &str,
    repository: &str,
    action: &str,
    extra: &[&str],
) -> String {
    let args = [
        "policy",
        "explain",
        "--token",
        token,
        "--repository",
        repository,
        "--action",
        action,
        "-o",
        "table",
    ];
    let out = cli(server, &[&args[..], extra].concat());
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs the CLI against `server` with the admin password in the environment.
pub fn cli(server: &Server, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("PORTCULLIS_REGISTRY", &server.base)
        .env("PORTCULLIS_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .output()
        .expect("run portcullis")
}
