//! `portcullis-load`: the load-test driver of issue 6. In one run it starts each target
//! (docker-registry 2.8.2 as the anchor, `portcullis-storage serve`, `portcullis serve`
//! with the bundled backend, `portcullis serve --upstream` in front of docker-registry)
//! on loopback over a temporary directory, pushes the same test image to it, measures
//! it, and stops it; then it prints every figure and, with `--out DIR`, writes
//! `results.json`, `RESULTS.md` and `results.png` there.
//!
//! `scripts/bench-report` is the documented way to run it; `portcullis-load run --help`
//! lists the knobs (`--quick`, `--target`, `--phase`, `--seconds`, ...).

mod client;
mod content;
mod lean;
mod measure;
mod report;
mod servers;
mod signed;
mod soak;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use content::Image;
use measure::{Phase, Settings};
use servers::{Binaries, Running, Target};

#[derive(Parser)]
#[command(
    about = "Load-test docker-registry, portcullis-storage and the portcullis gateway in one run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the targets one after the other, measure them, print (and write) the results.
    Run(Box<RunArgs>),
    /// A long mixed load (pushes, pulls, deletes, GC, token changes) against the gateway
    /// that checks every answer and samples the gateway's RSS and descriptors; writes
    /// soak.json, SOAK.md and soak.png. `scripts/soak` runs the 30-minute soak.
    Soak(Box<SoakArgs>),
    /// Write RESULTS.md and results.png again from DIR/results.json.
    Render {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// A smoke run: 2 s phases, a 32 MiB large blob, one push per push phase
    /// (explicit flags still win).
    #[arg(long)]
    quick: bool,
    /// Measured seconds per rate phase (and the minimum for the large GET) [10; quick 2].
    #[arg(long)]
    seconds: Option<f64>,
    /// Unmeasured warm-up seconds before each rate phase [1; quick 0.5].
    #[arg(long)]
    warmup: Option<f64>,
    /// Size of the large blob in MiB [256; quick 32].
    #[arg(long)]
    large_mib: Option<usize>,
    /// PATCH size of the chunked push, MiB.
    #[arg(long, default_value_t = 16)]
    chunk_mib: usize,
    /// Pushes per push phase [3; quick 1].
    #[arg(long)]
    push_rounds: Option<u64>,
    /// Connection counts of the manifest phases; the first also for 4 KiB blobs and tokens.
    #[arg(long, value_delimiter = ',', default_value = "32,256")]
    connections: Vec<usize>,
    /// Targets to run, in this order [all].
    #[arg(long, value_enum, value_delimiter = ',')]
    target: Vec<Target>,
    /// Phases to run [all].
    #[arg(long, value_enum, value_delimiter = ',')]
    phase: Vec<Phase>,
    /// Blobs of the gateway-s3 target in this bucket (s3://BUCKET[/PREFIX]); the endpoint
    /// and credentials come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.
    /// Without it, the S3 targets are left out of the default targets.
    #[arg(long, value_name = "URL")]
    s3: Option<String>,
    /// The metadata database of the gateway-s3-pg target (postgres://…); without it (or
    /// `--s3`), that target is left out of the default targets.
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// Where `portcullis` and `portcullis-storage` are [the directory of this binary].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    #[arg(long, value_name = "FILE", default_value = "/usr/bin/docker-registry")]
    registry_bin: PathBuf,
    /// `RUST_LOG` of portcullis and portcullis-storage: `warn` keeps them as quiet as the
    /// anchor; `info` is the gateway's default, with one audit line per decision.
    #[arg(long, value_name = "FILTER", default_value = "warn")]
    server_log: String,
    /// The gateways' `--audit-log`: `off` by default, as the anchor writes no
    /// per-request record; `stderr` measures the audit stream's cost.
    #[arg(long, value_name = "stderr|off", default_value = "off")]
    audit_log: String,
    /// Write results.json, RESULTS.md and results.png into DIR.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
struct SoakArgs {
    /// How long to run, in minutes.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    #[arg(long, default_value_t = 8)]
    repositories: usize,
    #[arg(long, default_value_t = 2)]
    pushers: usize,
    #[arg(long, default_value_t = 6)]
    pullers: usize,
    /// Live images kept; the deleter removes the oldest beyond this.
    #[arg(long, default_value_t = 40)]
    keep: usize,
    /// The gateway's `--gc-interval-seconds`.
    #[arg(long, default_value_t = 15)]
    gc_interval: u64,
    /// The gateway's `--gc-grace-seconds`.
    #[arg(long, default_value_t = 30)]
    gc_grace: u64,
    /// Seconds between samples of RSS and descriptors.
    #[arg(long, default_value_t = 10.0)]
    sample_seconds: f64,
    /// Where `portcullis` is [the directory of this binary].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    #[arg(long, value_name = "DIR", default_value = "benches/soak")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(*args).await,
        Command::Soak(args) => {
            let bins = Binaries {
                portcullis: bin_dir(args.bin_dir.as_deref())?.join("portcullis"),
                storage: PathBuf::new(),
                registry: PathBuf::new(),
                s3: None,
                postgres: None,
            };
            bins.check(&[Target::Gateway])?;
            let settings = soak::SoakSettings {
                duration: Duration::from_secs_f64(args.minutes * 60.0),
                repositories: args.repositories.max(1),
                pushers: args.pushers,
                pullers: args.pullers,
                keep: args.keep,
                gc_interval_seconds: args.gc_interval,
                gc_grace_seconds: args.gc_grace,
                sample_every: Duration::from_secs_f64(args.sample_seconds.max(0.5)),
            };
            soak::run(&bins, &settings, &args.out).await
        }
        Command::Render { out } => report::Run::load(&out)?.write(&out),
    }
}

/// `given`, or the directory of this binary (where cargo puts the servers too).
fn bin_dir(given: Option<&std::path::Path>) -> Result<PathBuf> {
    match given {
        Some(dir) => Ok(dir.to_path_buf()),
        None => Ok(std::env::current_exe()?
            .parent()
            .context("the driver's own directory")?
            .to_path_buf()),
    }
}

async fn run(args: RunArgs) -> Result<()> {
    let quick = args.quick;
    let pick = |given: Option<f64>, full: f64, smoke: f64| {
        Duration::from_secs_f64(given.unwrap_or(if quick { smoke } else { full }))
    };
    let settings = Settings {
        duration: pick(args.seconds, 10.0, 2.0),
        warmup: pick(args.warmup, 1.0, 0.5),
        connections: args.connections.clone(),
        chunk_bytes: args.chunk_mib << 20,
        push_rounds: args.push_rounds.unwrap_or(if quick { 1 } else { 3 }),
        phases: if args.phase.is_empty() {
            Phase::ALL.to_vec()
        } else {
            args.phase.clone()
        },
    };
    let large_mib = args.large_mib.unwrap_or(if quick { 32 } else { 256 });
    let targets = if args.target.is_empty() {
        Target::ALL
            .into_iter()
            .filter(|t| !t.on_s3() || args.s3.is_some())
            .filter(|t| *t != Target::GatewayS3Pg || args.postgres.is_some())
            .collect()
    } else {
        args.target.clone()
    };
    let bin_dir = bin_dir(args.bin_dir.as_deref())?;
    let bins = Binaries {
        portcullis: bin_dir.join("portcullis"),
        storage: bin_dir.join("portcullis-storage"),
        registry: args.registry_bin.clone(),
        s3: args.s3.clone(),
        postgres: args.postgres.clone(),
    };
    bins.check(&targets)?;
    if settings.phases.contains(&Phase::WrkManifestGet) {
        lean::check(lean::WRK, "wrk")?;
    }
    if settings.phases.contains(&Phase::AbManifestHead) {
        lean::check(lean::AB, "apache2-utils")?;
    }

    eprintln!("building the test image ({large_mib} MiB layer)");
    let image = Image::new(large_mib << 20)?;
    let mut measurements = Vec::new();
    for &target in &targets {
        eprintln!("== {}", target.description());
        let running = Running::start(
            target,
            &bins,
            &args.server_log,
            &["--audit-log", &args.audit_log],
        )
        .await?;
        let measured = async {
            let mut conn = client::Conn::open(&running.endpoint).await?;
            image
                .push(&mut conn)
                .await
                .context("pushing the test image")?;
            drop(conn);
            measure::measure(&running, &image, &settings).await
        }
        .await;
        match measured {
            Ok(m) => measurements.extend(m),
            Err(e) => {
                return Err(e.context(format!("{target}\n{}", running.stderr_tails())));
            }
        }
    }
    let run = report::Run::new(
        std::env::args().collect::<Vec<_>>().join(" "),
        format!(
            "{} s per rate phase after {} s warm-up; {large_mib} MiB large blob; {} MiB PATCHes; {} push(es) per push phase",
            settings.duration.as_secs_f64(),
            settings.warmup.as_secs_f64(),
            args.chunk_mib,
            settings.push_rounds
        ),
        measurements,
    );
    println!("{}", run.markdown());
    if let Some(out) = &args.out {
        run.save(out)?;
        run.write(out)?;
    }
    Ok(())
}
