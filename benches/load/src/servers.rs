//! The targets: starts each server on a free loopback port over a temporary data
//! directory, waits until it answers, gives the client its credentials, reads the
//! servers' peak RSS, and kills them when dropped.

use std::fmt;
use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

use crate::client::{Conn, Endpoint, collect};
use crate::content::REPOSITORY;

const ADMIN_PASSWORD: &str = "bench-admin-password-1234";
const BENCH_TOKEN: &str = "bench";

/// One target of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Debian docker-registry 2.8.2, no auth: the anchor.
    Registry,
    /// `portcullis-storage serve`, no auth.
    Storage,
    /// `portcullis serve` (bearer token, Cedar) with the bundled backend.
    Gateway,
    /// `portcullis serve --upstream` in front of docker-registry.
    GatewayUpstream,
    /// `portcullis serve --storage s3://…`: the bundled backend with blobs on S3 (run
    /// only with `--s3`; endpoint and credentials from the AWS_* variables).
    GatewayS3,
    /// `portcullis serve --storage s3://… --metadata postgres://…`: blobs on S3, metadata
    /// in PostgreSQL, as several gateways share them (run only with `--s3` and
    /// `--postgres`).
    GatewayS3Pg,
    /// Debian docker-registry 2.8.2 with its s3 driver on the same S3 server (run only
    /// with `--s3`).
    RegistryS3,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::Registry,
        Target::Storage,
        Target::Gateway,
        Target::GatewayUpstream,
        Target::GatewayS3,
        Target::GatewayS3Pg,
        Target::RegistryS3,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::Registry => "registry",
            Target::Storage => "storage",
            Target::Gateway => "gateway",
            Target::GatewayUpstream => "gateway-upstream",
            Target::GatewayS3 => "gateway-s3",
            Target::GatewayS3Pg => "gateway-s3-pg",
            Target::RegistryS3 => "registry-s3",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Target::Registry => "(1) docker-registry 2.8.2 direct, no auth (anchor)",
            Target::Storage => "(2) portcullis-storage serve direct, no auth",
            Target::Gateway => "(3) portcullis serve, bearer token + Cedar → bundled backend",
            Target::GatewayUpstream => {
                "(4) portcullis serve --upstream, bearer token + Cedar → docker-registry 2.8.2"
            }
            Target::GatewayS3 => {
                "(5) portcullis serve --storage s3://…, bearer token + Cedar → bundled backend, blobs on S3"
            }
            Target::GatewayS3Pg => {
                "(6) portcullis serve --storage s3://… --metadata postgres://…, bearer token + Cedar → bundled backend, blobs on S3, metadata in PostgreSQL"
            }
            Target::RegistryS3 => {
                "(7) docker-registry 2.8.2 direct, no auth, s3 driver on the same S3 server (redirects off: blobs stream through it)"
            }
        }
    }

    /// Whether the target keeps blobs on S3 (`--s3`).
    pub fn on_s3(self) -> bool {
        matches!(
            self,
            Target::GatewayS3 | Target::GatewayS3Pg | Target::RegistryS3
        )
    }

    pub fn is_gateway(self) -> bool {
        matches!(
            self,
            Target::Gateway | Target::GatewayUpstream | Target::GatewayS3 | Target::GatewayS3Pg
        )
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the server binaries are.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub portcullis: PathBuf,
    pub storage: PathBuf,
    pub registry: PathBuf,
    /// The bucket of the S3 targets (`s3://BUCKET[/PREFIX]`).
    pub s3: Option<String>,
    /// The database of [`Target::GatewayS3Pg`] (`postgres://…`).
    pub postgres: Option<String>,
}

impl Binaries {
    /// Fails early, naming the binary, when one the targets need is missing.
    pub fn check(&self, targets: &[Target]) -> Result<()> {
        for target in targets {
            let needed: &[&PathBuf] = match target {
                Target::Registry => &[&self.registry],
                Target::Storage => &[&self.storage],
                Target::Gateway => &[&self.portcullis],
                Target::GatewayUpstream => &[&self.portcullis, &self.registry],
                Target::GatewayS3 | Target::GatewayS3Pg => &[&self.portcullis],
                Target::RegistryS3 => &[&self.registry],
            };
            if target.on_s3() && self.s3.is_none() {
                bail!("the {target} target needs --s3 s3://BUCKET[/PREFIX]");
            }
            if *target == Target::GatewayS3Pg && self.postgres.is_none() {
                bail!("the {target} target needs --postgres postgres://…");
            }
            if let Some(missing) = needed.iter().find(|b| !b.is_file()) {
                bail!(
                    "`{}` not found (build with `cargo build --release --bins`, or pass --bin-dir / --registry-bin)",
                    missing.display()
                );
            }
        }
        Ok(())
    }
}

/// A child process, killed when dropped.
struct Process {
    name: &'static str,
    child: Child,
    stderr: PathBuf,
}

impl Process {
    fn spawn(name: &'static str, dir: &Path, cmd: &mut Command) -> Result<Process> {
        let stderr = dir.join(format!("{name}.stderr"));
        let child = cmd
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(File::create(dir.join(format!("{name}.stdout")))?)
            .stderr(File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Process {
            name,
            child,
            stderr,
        })
    }

    /// The last lines the process wrote to stderr, for error messages.
    fn stderr_tail(&self) -> String {
        let text = fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// VmHWM (peak resident set) in KiB.
    fn peak_rss_kib(&self) -> Result<u64> {
        proc_status_kib(self.child.id(), "VmHWM")
    }
}

/// A `kB` field of `/proc/<pid>/status` (`VmHWM`, `VmRSS`).
pub fn proc_status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no {field} for process {pid}"))
}

impl Drop for Process {
    fn drop(&mut self) {
        // Already exited is fine: there is nothing left to stop.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A started target: the endpoint the driver talks to and the processes serving it.
pub struct Running {
    pub target: Target,
    pub endpoint: Endpoint,
    /// For gateways: the token endpoint path with `service`, and the bench token's Basic
    /// credentials (what `docker login` sends).
    pub token_request: Option<(String, HeaderValue)>,
    processes: Vec<Process>,
    _dir: TempDir,
}

impl Running {
    /// `log` is the `RUST_LOG` of our servers; `gateway_args` go to the gateway's `serve`.
    pub async fn start(
        target: Target,
        bins: &Binaries,
        log: &str,
        gateway_args: &[&str],
    ) -> Result<Running> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("portcullis-load-{target}-"))
            .tempdir()?;
        let mut processes = Vec::new();
        let addr = free_port()?;
        match target {
            Target::Registry => {
                processes.push(registry(bins, dir.path(), addr, None)?);
            }
            Target::RegistryS3 => {
                processes.push(registry(bins, dir.path(), addr, bins.s3.as_deref())?);
            }
            Target::Storage => {
                processes.push(Process::spawn(
                    "portcullis-storage",
                    dir.path(),
                    Command::new(&bins.storage)
                        .args(["serve", "--listen", &addr.to_string(), "--data-dir"])
                        .arg(dir.path().join("data"))
                        .env("RUST_LOG", log),
                )?);
            }
            Target::Gateway | Target::GatewayUpstream | Target::GatewayS3 | Target::GatewayS3Pg => {
                let mut cmd = Command::new(&bins.portcullis);
                cmd.args(["serve", "--listen", &addr.to_string(), "--data-dir"])
                    .arg(dir.path().join("data"))
                    .args(gateway_args)
                    .env("PORTCULLIS_ADMIN_PASSWORD", ADMIN_PASSWORD)
                    .env("RUST_LOG", log);
                if target == Target::GatewayUpstream {
                    let upstream = free_port()?;
                    let p = registry(bins, dir.path(), upstream, None)?;
                    wait_ready(&p, upstream).await?;
                    processes.push(p);
                    cmd.arg("--upstream").arg(format!("http://{upstream}"));
                }
                if let (true, Some(url)) = (target.on_s3(), &bins.s3) {
                    cmd.arg("--storage").arg(url);
                }
                if let (Target::GatewayS3Pg, Some(url)) = (target, &bins.postgres) {
                    cmd.arg("--metadata").arg(url);
                }
                processes.insert(0, Process::spawn("portcullis", dir.path(), &mut cmd)?);
            }
        }
        wait_ready(&processes[0], addr).await?;
        let mut running = Running {
            target,
            endpoint: Endpoint::new(addr)?,
            token_request: None,
            processes,
            _dir: dir,
        };
        if target.is_gateway() {
            running
                .login()
                .await
                .with_context(|| format!("{target}: login"))?;
        }
        Ok(running)
    }

    /// Creates the bench token (content/read, content/write on the bench repository),
    /// fetches a bearer token for pull and push, and uses it for every request.
    async fn login(&mut self) -> Result<()> {
        let mut conn = Conn::open(&self.endpoint).await?;
        let (realm_path, service) = token_realm(&mut conn).await?;

        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, admin_basic()?);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let body = serde_json::to_vec(&serde_json::json!({
            "name": BENCH_TOKEN,
            "repositories": [{"repository": REPOSITORY, "actions": ["content/read", "content/write"]}],
        }))?;
        let resp = conn
            .send(self.endpoint.request(
                Method::POST,
                "/admin/v1/tokens",
                &headers,
                Bytes::from(body),
            )?)
            .await?;
        let status = resp.status();
        let created: serde_json::Value = serde_json::from_slice(&collect(resp).await?)?;
        if status != StatusCode::CREATED {
            bail!("creating the bench token answered {status}: {created}");
        }
        let password = created["credentials"]["passwords"][0]["value"]
            .as_str()
            .ok_or_else(|| anyhow!("no password in {created}"))?;
        let credentials = basic(BENCH_TOKEN, password)?;

        let path = format!("{realm_path}?service={service}&scope=repository:{REPOSITORY}:pull");
        let push_path = format!("{path},push");
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, credentials.clone());
        let resp = conn
            .send(
                self.endpoint
                    .request(Method::GET, &push_path, &headers, Bytes::new())?,
            )
            .await?;
        let status = resp.status();
        let token: serde_json::Value = serde_json::from_slice(&collect(resp).await?)?;
        let jwt = token["token"]
            .as_str()
            .ok_or_else(|| anyhow!("token endpoint answered {status}: {token}"))?;
        self.endpoint.auth = Some(HeaderValue::from_str(&format!("Bearer {jwt}"))?);
        self.token_request = Some((path, credentials));
        Ok(())
    }

    /// The last stderr lines of each server process, to explain a failure.
    pub fn stderr_tails(&self) -> String {
        self.processes
            .iter()
            .map(|p| format!("--- {} stderr:\n{}", p.name, p.stderr_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The process id of the first server (the gateway, for gateway targets).
    pub fn pid(&self) -> u32 {
        self.processes[0].child.id()
    }

    /// Peak RSS (VmHWM) of each server process, in KiB.
    pub fn peak_rss_kib(&self) -> Result<Vec<(&'static str, u64)>> {
        self.processes
            .iter()
            .map(|p| Ok((p.name, p.peak_rss_kib()?)))
            .collect()
    }
}

/// The token endpoint's path and the service name, from the challenge of `GET /v2/`.
pub async fn token_realm(conn: &mut Conn) -> Result<(String, String)> {
    let req = conn
        .endpoint()
        .request(Method::GET, "/v2/", &HeaderMap::new(), Bytes::new())?;
    let resp = conn.send(req).await?;
    let challenge = resp
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("GET /v2/ gave no challenge"))?;
    collect(resp).await?;
    let realm_path = challenge_param(&challenge, "realm")
        .map(|realm| crate::content::location_path(&realm))
        .ok_or_else(|| anyhow!("no realm in `{challenge}`"))?;
    let service = challenge_param(&challenge, "service").unwrap_or_else(|| "portcullis".to_owned());
    Ok((realm_path, service))
}

/// Basic credentials of the gateway's admin account.
pub fn admin_basic() -> Result<HeaderValue> {
    basic("admin", ADMIN_PASSWORD)
}

pub fn basic(user: &str, password: &str) -> Result<HeaderValue> {
    Ok(HeaderValue::from_str(&format!(
        "Basic {}",
        STANDARD.encode(format!("{user}:{password}"))
    ))?)
}

/// `key="value"` out of a `WWW-Authenticate` challenge.
fn challenge_param(challenge: &str, key: &str) -> Option<String> {
    let start = challenge.find(&format!("{key}=\""))? + key.len() + 2;
    let len = challenge[start..].find('"')?;
    Some(challenge[start..start + len].to_owned())
}

/// A loopback port nobody listens on (the OS picks it; the server binds it right after).
fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// docker-registry 2.8.2 with filesystem storage (or, given `s3://BUCKET[/PREFIX]`, its
/// s3 driver on the AWS_* endpoint with path-style addressing and redirects off, so blobs
/// stream through it as through the gateway), the in-memory blob descriptor cache (as in
/// its shipped config), and logs quiet so they do not cost it time.
fn registry(bins: &Binaries, dir: &Path, addr: SocketAddr, s3: Option<&str>) -> Result<Process> {
    let storage = match s3 {
        None => {
            let root = dir.join(format!("registry-{}", addr.port()));
            fs::create_dir_all(&root)?;
            format!("  filesystem:\n    rootdirectory: {}\n", root.display())
        }
        Some(url) => {
            let env =
                |name: &str| std::env::var(name).with_context(|| format!("{name} is not set"));
            let rest = url
                .strip_prefix("s3://")
                .ok_or_else(|| anyhow!("`{url}` is no s3:// URL"))?;
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            format!(
                "  redirect:\n    disable: true\n  s3:\n    accesskey: {}\n    secretkey: {}\n\
                 \x20   region: {}\n    regionendpoint: {}\n    forcepathstyle: true\n\
                 \x20   secure: false\n    bucket: {bucket}\n    rootdirectory: /{prefix}/registry-{}\n",
                env("AWS_ACCESS_KEY_ID")?,
                env("AWS_SECRET_ACCESS_KEY")?,
                env("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_owned()),
                env("AWS_ENDPOINT_URL")?,
                addr.port()
            )
        }
    };
    let config = dir.join(format!("registry-{}.yml", addr.port()));
    fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  cache:\n    blobdescriptor: inmemory\n{storage}http:\n  addr: {addr}\n"
        ),
    )?;
    Process::spawn(
        "docker-registry",
        dir,
        Command::new(&bins.registry)
            .arg("serve")
            .arg(&config)
            // Its AWS SDK cannot load a CA bundle into its HTTP client and panics at
            // start; the endpoint is plain HTTP on loopback.
            .env_remove("AWS_CA_BUNDLE"),
    )
}

/// Waits until `addr` answers `GET /v2/` (any status), or the process exits.
async fn wait_ready(process: &Process, addr: SocketAddr) -> Result<()> {
    let endpoint = Endpoint::new(addr)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut conn) = Conn::open(&endpoint).await {
            let req = endpoint.request(Method::GET, "/v2/", &HeaderMap::new(), Bytes::new())?;
            if let Ok(resp) = conn.send(req).await {
                collect(resp).await?;
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not answer on {addr} within 30 s:\n{}",
                process.name,
                process.stderr_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_params_are_read() {
        let c = r#"Bearer realm="http://127.0.0.1:5000/oauth2/token",service="portcullis""#;
        assert_eq!(
            challenge_param(c, "realm").as_deref(),
            Some("http://127.0.0.1:5000/oauth2/token")
        );
        assert_eq!(challenge_param(c, "service").as_deref(), Some("portcullis"));
        assert_eq!(challenge_param(c, "scope"), None);
    }
}
