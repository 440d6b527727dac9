//! The report of a run: `results.json` (every figure, to render again), `RESULTS.md`
//! (a table per measurement with absolute numbers and ratios to the anchor, the machine,
//! the date and the command, and issue 6's goals checked) and `results.png` (bars of
//! the ratios to the anchor, drawn with plotters and a system TrueType font).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::measure::{AB_HEAD, Measurement, WRK_GET};
use crate::servers::Target;

const JSON: &str = "results.json";
const MARKDOWN: &str = "RESULTS.md";
const PNG: &str = "results.png";
const ANCHOR: Target = Target::Registry;

#[derive(Debug, Serialize, Deserialize)]
pub struct Run {
    /// UTC, RFC 3339.
    pub date: String,
    pub command: String,
    pub settings: String,
    /// (what, value): CPU, cores, memory, OS, kernel.
    pub machine: Vec<(String, String)>,
    pub measurements: Vec<Measurement>,
}

impl Run {
    pub fn new(command: String, settings: String, measurements: Vec<Measurement>) -> Run {
        Run {
            date: OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .unwrap_or_default(),
            command,
            settings,
            machine: machine(),
            measurements,
        }
    }

    pub fn load(dir: &Path) -> Result<Run> {
        let path = dir.join(JSON);
        let text = fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}", path.display()))
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir)?;
        fs::write(dir.join(JSON), serde_json::to_string_pretty(self)?)?;
        Ok(())
    }

    /// RESULTS.md, then results.png (the markdown is written even if the plot fails).
    pub fn write(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir)?;
        fs::write(dir.join(MARKDOWN), self.markdown())?;
        let png = dir.join(PNG);
        self.plot(&png)
            .with_context(|| format!("drawing {}", png.display()))?;
        eprintln!(
            "wrote {} and {}",
            dir.join(MARKDOWN).display(),
            png.display()
        );
        Ok(())
    }

    fn find(&self, target: Target, test: &str, connections: usize) -> Option<&Measurement> {
        self.measurements
            .iter()
            .find(|m| m.target == target && m.test == test && m.connections == connections)
    }

    /// (test, connections) of every rate and throughput figure, in run order.
    fn groups(&self) -> Vec<(&str, usize)> {
        let mut groups: Vec<(&str, usize)> = Vec::new();
        for m in &self.measurements {
            let key = (m.test.as_str(), m.connections);
            if m.unit != "MiB" && !groups.contains(&key) {
                groups.push(key);
            }
        }
        groups
    }

    fn ratio(&self, m: &Measurement) -> Option<f64> {
        let anchor = self.find(ANCHOR, &m.test, m.connections)?;
        (anchor.value > 0.0).then(|| m.value / anchor.value)
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Load-test results\n");
        let _ = writeln!(
            s,
            "Regenerate with `scripts/bench-report` (release build, then the driver \
             `portcullis-load` in `benches/load/`; about 6 minutes after the build).\n"
        );
        let _ = writeln!(s, "- Date: {}", self.date);
        let _ = writeln!(s, "- Command: `{}`", self.command);
        let _ = writeln!(s, "- Settings: {}", self.settings);
        for (what, value) in &self.machine {
            let _ = writeln!(s, "- {what}: {value}");
        }
        let _ = writeln!(
            s,
            "\nThe machine is shared (other engineers compile on it) and the load driver runs on \
             the same cores as the server, so absolute numbers are noisy and low: **the ratios to \
             the anchor, measured minutes apart in the same run, are what counts.** Each target \
             runs alone, started fresh over an empty temporary directory, on loopback, HTTP/1.1 \
             keep-alive (rows marked h2c: HTTP/2 by prior knowledge, gateways only; \
             `1 conn`: that many concurrent streams on one connection). Rates count requests started in the measured window; latencies are \
             per request (HDR histogram). MB/s are 10^6 bytes per second. Peak RSS is VmHWM.\n"
        );
        let _ = writeln!(
            s,
            "Rows `{WRK_GET}` and `{AB_HEAD}` are driven by `wrk -t2` \
             (`benches/wrk/report.lua`) and `ab -k -i` instead of the driver's own client: \
             leaner clients leave the server more of the two cores, so a server's own cost \
             per request shows in its rate (ab's percentiles are whole milliseconds).\n"
        );
        let _ = writeln!(s, "Targets:\n");
        let targets = self.targets();
        for t in &targets {
            let _ = writeln!(s, "- `{}`: {}", t.name(), t.description());
        }
        let _ = writeln!(s, "\n![ratios to the anchor]({PNG})\n");
        self.goals(&mut s);
        for (test, connections) in self.groups() {
            let conns = if connections > 1 {
                format!(", {connections} connections")
            } else {
                String::new()
            };
            let _ = writeln!(s, "## {test}{conns}\n");
            let _ = writeln!(
                s,
                "| target | rate | × anchor | p50 | p99 | ok | errors |\n|---|---:|---:|---:|---:|---:|---:|"
            );
            for t in &targets {
                let Some(m) = self.find(*t, test, connections) else {
                    continue;
                };
                let ms = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.3} ms"));
                let _ = writeln!(
                    s,
                    "| {} | {:.1} {} | {} | {} | {} | {} | {} |",
                    t.name(),
                    m.value,
                    m.unit,
                    self.ratio(m).map_or("–".to_owned(), |r| format!("{r:.2}×")),
                    ms(m.p50_ms),
                    ms(m.p99_ms),
                    m.count,
                    m.errors
                );
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(
            s,
            "## Peak RSS (VmHWM over the whole target run)\n\n| target | process | MiB | × anchor |\n|---|---|---:|---:|"
        );
        let anchor_rss = self
            .measurements
            .iter()
            .find(|m| m.target == ANCHOR && m.unit == "MiB")
            .map(|m| m.value);
        for m in self.measurements.iter().filter(|m| m.unit == "MiB") {
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {} |",
                m.target.name(),
                m.test.trim_start_matches("peak RSS "),
                m.value,
                anchor_rss.map_or("–".to_owned(), |a| format!("{:.2}×", m.value / a))
            );
        }
        s
    }

    fn targets(&self) -> Vec<Target> {
        Target::ALL
            .into_iter()
            .filter(|t| self.measurements.iter().any(|m| m.target == *t))
            .collect()
    }

    /// Issue 6's goals, as far as this run measured them.
    fn goals(&self, s: &mut String) {
        let mut rows = Vec::new();
        let mut row = |goal: String, measured: String, met: bool| {
            rows.push(format!(
                "| {goal} | {measured} | {} |",
                if met { "yes" } else { "**no**" }
            ));
        };
        for (test, connections) in self.groups() {
            if test != "manifest GET" {
                continue;
            }
            let gw = self.find(Target::Gateway, test, connections);
            // Issue 17: shared storage (S3 + PostgreSQL) against the local disk and
            // against distribution on the same S3 server.
            if let Some(pg) = self.find(Target::GatewayS3Pg, test, connections) {
                if let Some(gw) = gw {
                    let share = pg.value / gw.value;
                    row(
                        format!(
                            "manifest GET ×{connections}: gateway-s3-pg ≥ 80% of gateway (local disk)"
                        ),
                        format!("{:.1}%", share * 100.0),
                        share >= 0.80,
                    );
                }
                if let Some(reg) = self.find(Target::RegistryS3, test, connections) {
                    let times = pg.value / reg.value;
                    row(
                        format!("manifest GET ×{connections}: gateway-s3-pg ≥ 5× registry-s3"),
                        format!("{times:.2}×"),
                        times >= 5.0,
                    );
                }
            }
            if let Some(r) = gw.and_then(|g| self.ratio(g)) {
                row(
                    format!("manifest GET ×{connections}: gateway ≥ 10× anchor"),
                    format!("{r:.2}×"),
                    r >= 10.0,
                );
            }
            if let (Some(gw), Some(st)) = (gw, self.find(Target::Storage, test, connections)) {
                let overhead = 1.0 - gw.value / st.value;
                row(
                    format!("manifest GET ×{connections}: gateway rate ≥ 85% of storage"),
                    format!("{:.1}% lower", overhead * 100.0),
                    overhead <= 0.15,
                );
                if let (Some(g50), Some(s50)) = (gw.p50_ms, st.p50_ms) {
                    row(
                        format!("manifest GET ×{connections}: gateway p50 ≤ storage + 0.2 ms"),
                        format!("{:+.3} ms", g50 - s50),
                        g50 - s50 <= 0.2,
                    );
                }
            }
        }
        // Lean clients (wrk, ab): the gateway against the store it fronts, and in front
        // of docker-registry against docker-registry direct.
        for test in [WRK_GET, AB_HEAD] {
            let Some(conns) = self.groups().iter().find(|g| g.0 == test).map(|g| g.1) else {
                continue;
            };
            let find = |t| self.find(t, test, conns).filter(|m| m.value > 0.0);
            if let (Some(gw), Some(st)) = (find(Target::Gateway), find(Target::Storage)) {
                let share = gw.value / st.value;
                row(
                    format!("{test} ×{conns}: gateway ≥ 90% of storage"),
                    format!("{:.1}%", share * 100.0),
                    share >= 0.90,
                );
            }
            if let Some(up) = find(Target::GatewayUpstream)
                && let Some(r) = self.ratio(up)
            {
                row(
                    format!("{test} ×{conns}: gateway-upstream ≥ 0.95× registry direct"),
                    format!("{r:.2}×"),
                    r >= 0.95,
                );
            }
        }
        for m in self
            .measurements
            .iter()
            .filter(|m| m.target == Target::Gateway && m.unit == "MB/s")
        {
            let goal = if m.test.contains("GET") {
                1500.0
            } else {
                900.0
            };
            row(
                format!("{}: gateway ≥ {goal} MB/s", m.test),
                format!("{:.0} MB/s", m.value),
                m.value >= goal,
            );
        }
        if let Some(m) = self
            .measurements
            .iter()
            .find(|m| m.target == Target::Gateway && m.test == "peak RSS portcullis")
        {
            row(
                "gateway peak RSS < 100 MiB (issue: during a 1 GiB up- and download; \
                 here with this run's large blob)"
                    .to_owned(),
                format!("{:.1} MiB", m.value),
                m.value < 100.0,
            );
        }
        if !rows.is_empty() {
            let _ = writeln!(
                s,
                "## Goals, in this run (issues 6 and 17; lean-client rows: protocol fidelity, item 8)\n\n| goal | measured | met |\n|---|---:|---|\n{}\n",
                rows.join("\n")
            );
        }
    }

    /// Grouped bars: per measurement, each target's figure over the anchor's (log scale).
    fn plot(&self, path: &PathBuf) -> Result<()> {
        register_font()?;
        // Only figures the anchor has too (not the token endpoint).
        let groups: Vec<(&str, usize)> = self
            .groups()
            .into_iter()
            .filter(|(test, conns)| self.find(ANCHOR, test, *conns).is_some())
            .collect();
        let others: Vec<Target> = self
            .targets()
            .into_iter()
            .filter(|t| *t != ANCHOR)
            .collect();
        let bars: Vec<(usize, usize, f64)> = groups
            .iter()
            .enumerate()
            .flat_map(|(g, (test, conns))| {
                others.iter().enumerate().filter_map(move |(i, t)| {
                    let m = self.find(*t, test, *conns)?;
                    Some((g, i, self.ratio(m)?))
                })
            })
            .collect();
        let (lo, hi) = bars
            .iter()
            .fold((0.5f64, 2.0f64), |(lo, hi), b| (lo.min(b.2), hi.max(b.2)));
        let (lo, hi) = (lo * 0.7, hi * 1.5);

        let root = BitMapBackend::new(path, (1400, 720)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "Each figure ÷ the anchor's (docker-registry 2.8.2) in the same run, {}",
                    self.date.get(..16).unwrap_or(&self.date).replace('T', " ")
                ),
                ("sans-serif", 22),
            )
            .margin(20)
            .x_label_area_size(90)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..groups.len().max(1) as f64, (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("× anchor (log scale)")
            .y_label_formatter(&|v| format!("{v:.2}"))
            .draw()?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 1.0), (groups.len() as f64, 1.0)],
            BLACK.stroke_width(2),
        )))?;
        let colors = [
            RGBColor(31, 119, 180),
            RGBColor(214, 39, 40),
            RGBColor(44, 160, 44),
        ];
        let width = 0.8 / others.len().max(1) as f64;
        for (i, t) in others.iter().enumerate() {
            let color = colors[i % colors.len()];
            chart
                .draw_series(bars.iter().filter(|b| b.1 == i).map(|&(g, _, r)| {
                    let x0 = g as f64 + 0.1 + width * i as f64;
                    Rectangle::new([(x0, lo), (x0 + width * 0.9, r)], color.filled())
                }))?
                .label(t.name())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 12, y + 6)], color.filled())
                });
            chart.draw_series(bars.iter().filter(|b| b.1 == i).map(|&(g, _, r)| {
                let x = g as f64 + 0.1 + width * (i as f64 + 0.45);
                Text::new(
                    format!("{r:.1}"),
                    (x, r),
                    ("sans-serif", 12)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                )
            }))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        // Group names under the axis, placed through the chart's own coordinate mapping.
        let style = ("sans-serif", 13)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        for (g, (test, conns)) in groups.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(g as f64 + 0.5, lo));
            let mut lines = split_label(test);
            if *conns > 1 {
                lines.push(format!("×{conns} conns"));
            }
            for (k, line) in lines.iter().enumerate() {
                root.draw(&Text::new(line.clone(), (x, y + 8 + 16 * k as i32), &style))?;
            }
        }
        root.present()?;
        Ok(())
    }
}

/// A test name wrapped into lines of about 14 characters (without any parenthesis),
/// so labels fit their group.
fn split_label(test: &str) -> Vec<String> {
    let name = test.split(" (").next().unwrap_or(test);
    let mut lines: Vec<String> = Vec::new();
    for word in name.split(' ') {
        match lines.last_mut() {
            Some(line) if line.len() + word.len() < 15 => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    lines
}

/// Registers a system TrueType font as `sans-serif` for plotters' ab_glyph backend.
pub fn register_font() -> Result<()> {
    let candidates = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    ];
    let path = candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| find_ttf(Path::new("/usr/share/fonts")))
        .ok_or_else(|| {
            anyhow!("no TrueType font under /usr/share/fonts (install fonts-dejavu-core)")
        })?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Vec::leak(fs::read(&path)?);
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{} is not a usable font", path.display()))
}

fn find_ttf(dir: &Path) -> Option<PathBuf> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    entries.iter().find_map(|p| {
        if p.is_dir() {
            find_ttf(p)
        } else {
            p.extension().is_some_and(|e| e == "ttf").then(|| p.clone())
        }
    })
}

/// CPU model and count, memory, OS and kernel, from /proc and /etc/os-release.
fn machine() -> Vec<(String, String)> {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let field = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once([':', '=']))
            .map(|(_, v)| v.trim().trim_matches('"').to_owned())
            .unwrap_or_default()
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: u64 = field(&read("/proc/meminfo"), "MemTotal")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or(0);
    vec![
        (
            "CPU".into(),
            format!("{} × {cores}", field(&cpuinfo, "model name")),
        ),
        (
            "Memory".into(),
            format!("{:.1} GiB", mem_kib as f64 / (1 << 20) as f64),
        ),
        ("OS".into(), field(&read("/etc/os-release"), "PRETTY_NAME")),
        (
            "Kernel".into(),
            read("/proc/sys/kernel/osrelease").trim().to_owned(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(target: Target, test: &str, connections: usize, value: f64) -> Measurement {
        Measurement {
            target,
            test: test.into(),
            connections,
            value,
            unit: if test.starts_with("peak") {
                "MiB"
            } else {
                "req/s"
            }
            .into(),
            p50_ms: Some(1.0),
            p99_ms: Some(2.0),
            count: 10,
            errors: 0,
        }
    }

    fn run() -> Run {
        Run::new(
            "portcullis-load run".into(),
            "test".into(),
            vec![
                m(Target::Registry, "manifest GET", 32, 1000.0),
                m(Target::Storage, "manifest GET", 32, 20000.0),
                m(Target::Gateway, "manifest GET", 32, 12000.0),
                m(Target::Registry, "peak RSS docker-registry", 0, 50.0),
                m(Target::Gateway, "peak RSS portcullis", 0, 40.0),
            ],
        )
    }

    #[test]
    fn markdown_has_ratios_and_checked_goals() {
        let md = run().markdown();
        assert!(md.contains("| gateway | 12000.0 req/s | 12.00× |"), "{md}");
        assert!(md.contains("| storage | 20000.0 req/s | 20.00× |"), "{md}");
        assert!(md.contains("gateway ≥ 10× anchor | 12.00× | yes |"), "{md}");
        assert!(
            md.contains("≥ 85% of storage | 40.0% lower | **no** |"),
            "{md}"
        );
        assert!(
            md.contains("| gateway | portcullis | 40.0 | 0.80× |"),
            "{md}"
        );
    }

    #[test]
    fn labels_wrap_and_drop_parentheses() {
        assert_eq!(
            split_label("256 MiB blob push chunked (16 MiB PATCHes)"),
            ["256 MiB blob", "push chunked"]
        );
        assert_eq!(split_label("manifest GET"), ["manifest GET"]);
    }

    #[test]
    fn the_plot_is_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let run = run();
        run.save(dir.path()).unwrap();
        let loaded = Run::load(dir.path()).unwrap();
        loaded.write(dir.path()).unwrap();
        let png = fs::read(dir.path().join(PNG)).unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        assert!(png.len() > 10_000);
    }
}
