//! Rates measured by lean C load generators instead of the driver's own client: `wrk`
//! (manifest GET) and `ab -k -i` (manifest HEAD, which wrk cannot do: its parser waits
//! for the body a HEAD response's `Content-Length` announces). On a 2-core machine the
//! client shares the cores with the server; the driver's client (tokio + hyper) takes a
//! larger share, which caps every target alike and hides a server's own cost. These
//! clients take less, so the gap between two servers shows.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use tokio::process::Command;

use crate::measure::Measurement;

/// Prints wrk's result as a JSON line (see the script).
const WRK_SCRIPT: &str = include_str!("../../wrk/report.lua");

/// The programs, from Debian's `wrk` and `apache2-utils`.
pub const WRK: &str = "wrk";
pub const AB: &str = "ab";

/// Fails early, naming the package, when a program is not on `PATH`.
pub fn check(program: &str, package: &str) -> Result<()> {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| Path::new(&dir).join(program).is_file())
    });
    if !found {
        bail!("`{program}` not found (apt-get install {package}, or leave out its phase)");
    }
    Ok(())
}

/// One repeated request: where, and the headers it carries besides `Host`.
pub struct Request<'a> {
    pub addr: SocketAddr,
    pub path: &'a str,
    pub headers: Vec<(String, String)>,
}

impl Request<'_> {
    fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.path)
    }
}

/// wrk and ab take whole seconds.
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

async fn run(cmd: &mut Command, what: &str) -> Result<Output> {
    let out = cmd
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

#[derive(Deserialize)]
struct WrkResult {
    requests: u64,
    duration_us: u64,
    connect: u64,
    read: u64,
    write: u64,
    status: u64,
    timeout: u64,
    p50_us: u64,
    p99_us: u64,
}

/// `wrk -t2` GETs on `m.connections` connections: an unmeasured warm-up run, then the
/// measured one.
pub async fn wrk_get(
    req: &Request<'_>,
    mut m: Measurement,
    warmup: Duration,
    duration: Duration,
) -> Result<Measurement> {
    let script = tempfile::Builder::new().suffix(".lua").tempfile()?;
    std::fs::write(script.path(), WRK_SCRIPT)?;
    let wrk = |seconds: u64| {
        let mut cmd = Command::new(WRK);
        cmd.arg("-t2")
            .arg(format!("-c{}", m.connections))
            .arg(format!("-d{seconds}s"))
            .arg("-s")
            .arg(script.path());
        for (name, value) in &req.headers {
            cmd.arg("-H").arg(format!("{name}: {value}"));
        }
        cmd.arg(req.url());
        cmd
    };
    if !warmup.is_zero() {
        run(&mut wrk(whole_seconds(warmup)), "wrk (warm-up)").await?;
    }
    let out = run(&mut wrk(whole_seconds(duration)), "wrk").await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| anyhow!("no result line from wrk:\n{stdout}"))?;
    let r: WrkResult =
        serde_json::from_str(line).with_context(|| format!("wrk's result `{line}`"))?;
    m.count = r.requests.saturating_sub(r.status);
    m.errors = r.status + r.connect + r.read + r.write + r.timeout;
    m.value = m.count as f64 / (r.duration_us.max(1) as f64 / 1e6);
    m.p50_ms = Some(r.p50_us as f64 / 1000.0);
    m.p99_ms = Some(r.p99_us as f64 / 1000.0);
    Ok(m)
}

/// `ab -k -i` (HEAD, keep-alive) on `m.connections` connections: an unmeasured warm-up
/// run, then the measured one.
pub async fn ab_head(
    req: &Request<'_>,
    mut m: Measurement,
    warmup: Duration,
    duration: Duration,
) -> Result<Measurement> {
    let ab = |seconds: u64| {
        let mut cmd = Command::new(AB);
        // `-n` after `-t`: the time limit ends the run, not ab's implied 50000 requests.
        cmd.args(["-k", "-i", "-q", "-r"])
            .arg("-c")
            .arg(m.connections.to_string())
            .arg("-t")
            .arg(seconds.to_string())
            .args(["-n", "100000000"]);
        for (name, value) in &req.headers {
            cmd.arg("-H").arg(format!("{name}: {value}"));
        }
        cmd.arg(req.url());
        cmd
    };
    if !warmup.is_zero() {
        run(&mut ab(whole_seconds(warmup)), "ab (warm-up)").await?;
    }
    let out = run(&mut ab(whole_seconds(duration)), "ab").await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let r = AbResult::parse(&text).with_context(|| format!("ab's report:\n{text}"))?;
    if r.keep_alive < r.complete / 2 {
        bail!(
            "ab reused connections for only {} of {} requests (the server did not keep them alive)",
            r.keep_alive,
            r.complete
        );
    }
    m.errors = r.failed + r.non_2xx;
    m.count = r.complete.saturating_sub(m.errors);
    m.value = m.count as f64 / r.seconds.max(1e-3);
    m.p50_ms = Some(r.p50_ms);
    m.p99_ms = Some(r.p99_ms);
    Ok(m)
}

/// The figures of ab's report that the driver uses.
#[derive(Debug, PartialEq)]
struct AbResult {
    complete: u64,
    failed: u64,
    non_2xx: u64,
    keep_alive: u64,
    seconds: f64,
    /// ab reports latency percentiles in whole milliseconds.
    p50_ms: f64,
    p99_ms: f64,
}

impl AbResult {
    fn parse(text: &str) -> Result<AbResult> {
        let field = |name: &str| {
            text.lines().find_map(|l| {
                l.trim_start()
                    .strip_prefix(name)
                    .and_then(|rest| rest.split_whitespace().next())
            })
        };
        let number = |name: &str| -> Result<u64> {
            field(name)
                .ok_or_else(|| anyhow!("no `{name}`"))?
                .parse()
                .with_context(|| format!("`{name}`"))
        };
        let percentile = |p: &str| -> Result<f64> {
            field(&format!("{p}%"))
                .ok_or_else(|| anyhow!("no {p}% percentile"))?
                .parse()
                .with_context(|| format!("the {p}% percentile"))
        };
        Ok(AbResult {
            complete: number("Complete requests:")?,
            failed: number("Failed requests:")?,
            // Only printed when there are any.
            non_2xx: number("Non-2xx responses:").unwrap_or(0),
            keep_alive: number("Keep-Alive requests:")?,
            seconds: field("Time taken for tests:")
                .ok_or_else(|| anyhow!("no `Time taken for tests:`"))?
                .parse()
                .context("`Time taken for tests:`")?,
            p50_ms: percentile("50")?,
            p99_ms: percentile("99")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AB_REPORT: &str = "\
Server Software:
Server Hostname:        127.0.0.1
Server Port:            5101

Document Path:          /v2/bench/app/manifests/v1
Document Length:        0 bytes

Concurrency Level:      32
Time taken for tests:   5.000 seconds
Complete requests:      98765
Failed requests:        3
   (Connect: 0, Receive: 0, Length: 3, Exceptions: 0)
Non-2xx responses:      2
Keep-Alive requests:    98765
Total transferred:      30000000 bytes
HTML transferred:       0 bytes
Requests per second:    19753.00 [#/sec] (mean)

Percentage of the requests served within a certain time (ms)
  50%      1
  66%      2
  99%      4
 100%     12 (longest request)
";

    #[test]
    fn ab_reports_are_read() {
        assert_eq!(
            AbResult::parse(AB_REPORT).unwrap(),
            AbResult {
                complete: 98765,
                failed: 3,
                non_2xx: 2,
                keep_alive: 98765,
                seconds: 5.0,
                p50_ms: 1.0,
                p99_ms: 4.0,
            }
        );
        let clean = AB_REPORT.replace("Non-2xx responses:      2\n", "");
        assert_eq!(AbResult::parse(&clean).unwrap().non_2xx, 0);
        assert!(AbResult::parse("Complete requests: 1\n").is_err());
    }

    #[test]
    fn lean_clients_run_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_millis(200)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(5)), 5);
        assert_eq!(whole_seconds(Duration::from_millis(5200)), 6);
    }
}
