//! Issue 18's cluster benchmark: the manifest GET rate through HAProxy
//! (`deploy/haproxy.cfg`) over 1, 2 and 3 gateways sharing one PostgreSQL and one S3
//! (test-support's `cluster`), and straight to one gateway for comparison, with the CPU
//! the gateways and HAProxy spend per request (their `/proc/<pid>/stat` CPU time before
//! and after a run, divided by its requests). Load: `wrk -t2` with
//! `benches/wrk/report.lua`, a bearer token, one manifest by tag.
//!
//! `scripts/bench-cluster` runs it on a release build of `portcullis` and writes
//! `benches/cluster/RESULTS.md`; `cargo test --all-targets` runs it once with one-second
//! phases as a smoke test (writing nothing).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark setup failure should abort loudly"
)]

use std::fmt::Write as _;
use std::process::Command;

use portcullis_test_support::client;
use portcullis_test_support::cluster::{Cluster, GATEWAYS};
use portcullis_test_support::content::{OCI_MANIFEST, TestImage};
use serde_json::Value;

const REPOSITORY: &str = "bench/app";
/// What is measured: straight to gateway 0, then through HAProxy over 1, 2, 3 gateways.
const SETUPS: [&str; 4] = [
    "1 gateway, direct (no HAProxy)",
    "1 gateway via HAProxy",
    "2 gateways via HAProxy",
    "3 gateways via HAProxy",
];

/// One measured run.
struct Row {
    setup: &'static str,
    requests: u64,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// CPU µs per request: the gateways', HAProxy's (none when bypassed).
    gateway_cpu_us: f64,
    haproxy_cpu_us: Option<f64>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let value = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().expect("a whole number"))
    };
    let seconds = value("--seconds", if bench { 10 } else { 1 });
    let connections = value("--connections", 64);
    let rounds = value("--rounds", if bench { 3 } else { 1 });

    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut cluster = Cluster::start();
    let password = cluster.admin_password();
    TestImage::new("cluster bench").push(&client(), &cluster.url(), REPOSITORY, "v1", &|rb| {
        rb.basic_auth("admin", Some(password))
    });
    let reply: Value = client()
        .get(format!(
            "{}/oauth2/token?service=portcullis&scope=repository:{REPOSITORY}:pull",
            cluster.url()
        ))
        .basic_auth("admin", Some(password))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let token = reply["token"].as_str().expect("a token").to_owned();
    let run =
        |cluster: &Cluster, setup: &'static str, base: &str, gateways: usize, haproxy: bool| {
            let pids: Vec<u32> = (0..gateways).map(|i| cluster.gateway(i).pid()).collect();
            let haproxy = haproxy.then(|| cluster.haproxy_pid());
            let url = format!("{base}/v2/{REPOSITORY}/manifests/v1");
            wrk(&url, &token, connections, 1);
            let (gateway_before, haproxy_before) = (cpu(&pids), haproxy.map(|p| cpu(&[p])));
            let result = wrk(&url, &token, connections, seconds);
            let gateway_cpu = cpu(&pids) - gateway_before;
            let haproxy_cpu = haproxy.zip(haproxy_before).map(|(p, b)| cpu(&[p]) - b);
            let errors = ["status", "connect", "read", "write", "timeout"]
                .iter()
                .map(|k| result[k].as_u64().unwrap_or(0))
                .sum();
            let requests = result["requests"].as_u64().unwrap_or(0);
            let ok = requests
                .saturating_sub(result["status"].as_u64().unwrap_or(0))
                .max(1);
            let per_request = |seconds: f64| seconds * 1e6 / ok as f64;
            let row = Row {
                setup,
                requests,
                rate: ok as f64 / (result["duration_us"].as_f64().unwrap_or(1.0) / 1e6),
                p50_ms: result["p50_us"].as_f64().unwrap_or(0.0) / 1000.0,
                p99_ms: result["p99_us"].as_f64().unwrap_or(0.0) / 1000.0,
                errors,
                gateway_cpu_us: per_request(gateway_cpu),
                haproxy_cpu_us: haproxy_cpu.map(per_request),
            };
            println!("{}", row_line(&row));
            row
        };

    // Rounds of every setup in turn, so a change in what else the machine runs spreads
    // over all of them.
    let mut runs: Vec<Vec<Row>> = SETUPS.iter().map(|_| Vec::new()).collect();
    println!("{}", header());
    for _ in 0..rounds {
        runs[0].push(run(&cluster, SETUPS[0], &cluster.gateway_url(0), 1, false));
        // One gateway in rotation, then two, then three.
        for i in (1..GATEWAYS).rev() {
            cluster.kill(i);
            cluster.wait_in_rotation(i, false);
        }
        for n in 1..=GATEWAYS {
            if n > 1 {
                cluster.restart(n - 1);
                cluster.wait_in_rotation(n - 1, true);
            }
            runs[n].push(run(&cluster, SETUPS[n], &cluster.url(), n, true));
        }
    }
    let summary = summary(&mut runs);
    println!("\n{summary}");
    if bench {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/cluster/RESULTS.md");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let report = report(&summary, &runs, rounds, seconds, connections, &load_before);
        std::fs::write(&path, report).unwrap();
        println!("wrote {}", path.display());
    }
}

/// `wrk -t2 -cCONNECTIONS -dSECONDS` GETs of `url` with the bearer `token`; the report
/// script's JSON line.
fn wrk(url: &str, token: &str, connections: u64, seconds: u64) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/wrk/report.lua");
    let out = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .args(["-s", script])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", &format!("Accept: {OCI_MANIFEST}")])
        .arg(url)
        .output()
        .expect("run wrk (Debian's wrk, scripts/install-test-deps.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no result line from wrk: {stdout}"));
    serde_json::from_str(line).expect("wrk's result line")
}

/// CPU seconds (user + system) the processes `pids` have used so far.
fn cpu(pids: &[u32]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
            // Fields after the parenthesized command name: state is field 3, utime 14,
            // stime 15.
            let rest = &stat[stat.rfind(')').expect("comm") + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
        })
        .sum();
    ticks as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// When the gateway binary was last modified.
fn built() -> String {
    let out = Command::new("date")
        .args([
            "-u",
            "+%Y-%m-%d %H:%M UTC",
            "-r",
            portcullis_test_support::gateway::bin(),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn header() -> String {
    "| setup | requests | requests/s | p50 ms | p99 ms | errors | gateway CPU µs/request | HAProxy CPU µs/request |\n\
     |---|---:|---:|---:|---:|---:|---:|---:|"
        .to_owned()
}

fn row_line(r: &Row) -> String {
    format!(
        "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {} |",
        r.setup,
        r.requests,
        r.rate,
        r.p50_ms,
        r.p99_ms,
        r.errors,
        r.gateway_cpu_us,
        r.haproxy_cpu_us
            .map_or("–".to_owned(), |us| format!("{us:.0}"))
    )
}

/// Per setup, the run of median rate (its latencies and CPU), the rates' range and the
/// errors of all runs.
fn summary(runs: &mut [Vec<Row>]) -> String {
    let mut md = "| setup | runs | requests/s (median) | min – max | p50 ms | p99 ms | errors | \
                  gateway CPU µs/request | HAProxy CPU µs/request |\n\
                  |---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        .to_owned();
    for setup in runs.iter_mut() {
        setup.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        let (Some(min), Some(max)) = (setup.first(), setup.last()) else {
            continue;
        };
        let m = &setup[setup.len() / 2];
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} – {:.0} | {:.2} | {:.2} | {} | {:.0} | {} |",
            m.setup,
            setup.len(),
            m.rate,
            min.rate,
            max.rate,
            m.p50_ms,
            m.p99_ms,
            setup.iter().map(|r| r.errors).sum::<u64>(),
            m.gateway_cpu_us,
            m.haproxy_cpu_us
                .map_or("–".to_owned(), |us| format!("{us:.0}"))
        );
    }
    md
}

fn report(
    summary: &str,
    runs: &[Vec<Row>],
    rounds: u64,
    seconds: u64,
    connections: u64,
    load_before: &str,
) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let mut md = format!(
        "# Cluster benchmark: manifest GET through HAProxy over 1, 2 and 3 gateways\n\n\
         `scripts/bench-cluster` (benches/cluster.rs): one PostgreSQL 15 (metadata, and \
         the control plane for builds that have one there), one SeaweedFS (blobs), `portcullis serve` release builds on \
         loopback ports, HAProxy 2.6 on `deploy/haproxy.cfg`; `wrk -t2 -c{connections} \
         -d{seconds}s` GETs of one manifest by tag with a bearer token, after a 1 s warm-up; \
         {rounds} rounds of every setup in turn. CPU per request: the gateways' (and \
         HAProxy's) user + system time over the run (`/proc/<pid>/stat`) divided by the \
         successful requests.\n\n\
         Gateway binary: `{}` (built {}).\n\n\
         Machine: {cpus} CPUs, shared by everything above and wrk (load average before the \
         run: {}).\n\n",
        portcullis_test_support::gateway::bin(),
        built(),
        load_before
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    md.push_str(summary);
    md.push_str(
        "\nMore gateways raise the rate only when they bring CPUs of their own: here every \
         process shares the same CPUs, so the rate is bounded by the CPU all of them spend \
         per request (gateways, HAProxy and wrk), and splitting the load over more \
         processes costs a little more per request.\n\nEvery run, by setup and rate:\n\n",
    );
    md.push_str(&header());
    md.push('\n');
    for row in runs.iter().flatten() {
        let _ = writeln!(md, "{}", row_line(row));
    }
    md
}
