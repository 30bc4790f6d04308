//! Reports of the lab's runs: statistics over repeated runs, the benchmark table next to
//! the targets of docs/ARCHITECTURE.md, JSON (serde) files, and a PNG plot of who answered
//! the client's probes over time.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use super::traffic::ProbeLog;

/// Errors of writing reports.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Serializing to JSON failed.
    #[error("cannot serialize to JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Drawing or encoding the plot failed.
    #[error("cannot draw the plot {path}: {message}")]
    Plot {
        /// The file.
        path: String,
        /// What the plotting library said.
        message: String,
    },
    /// A plot needs a size of at least 200×100 pixels.
    #[error("plot size {0}x{1} is too small (at least 200x100)")]
    PlotSize(u32, u32),
}

/// Minimum, median and maximum of a set of values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats<T> {
    /// How many values.
    pub count: usize,
    /// The smallest.
    pub min: T,
    /// The median (the mean of the two middle values for an even count).
    pub median: T,
    /// The largest.
    pub max: T,
}

impl Stats<Duration> {
    /// Statistics of durations; `None` for no values.
    pub fn of_durations(values: &[Duration]) -> Option<Stats<Duration>> {
        let mut v = values.to_vec();
        v.sort();
        let n = v.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2,
        };
        Some(Stats {
            count: n,
            min: v[0],
            median,
            max: v[n - 1],
        })
    }
}

impl Stats<f64> {
    /// Statistics of counts (lost probes); `None` for no values. The median of an even
    /// count can be a half.
    pub fn of_counts(values: &[usize]) -> Option<Stats<f64>> {
        let mut v = values.to_vec();
        v.sort_unstable();
        let n = v.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => v[n / 2] as f64,
            _ => (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0,
        };
        Some(Stats {
            count: n,
            min: v[0] as f64,
            median,
            max: v[n - 1] as f64,
        })
    }
}

/// One run of a failure mode, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunResult {
    /// Failed probes of the longest outage (0 without one).
    pub lost: usize,
    /// Duration of the longest outage (0 without one).
    #[serde(rename = "outage_us", with = "crate::lab::traffic::micros")]
    pub outage: Duration,
    /// Failed probes in the whole (analysed part of the) log.
    pub lost_total: usize,
    /// Who answered last.
    pub answered_by_last: Option<String>,
}

impl RunResult {
    /// Summarizes a log (usually the part after the failure's mark: `log.after(t)`).
    pub fn from_log(log: &ProbeLog) -> RunResult {
        let longest = log.longest_outage();
        RunResult {
            lost: longest.as_ref().map_or(0, |o| o.lost),
            outage: longest.map_or(Duration::ZERO, |o| o.duration),
            lost_total: log.lost(),
            answered_by_last: log.answered_by_last().map(str::to_owned),
        }
    }
}

/// All runs of one failure mode, with the target it is measured against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModeResult {
    /// The failure mode (`"planned: drain"`, `"hard: SIGKILL"`, `"failback"`, …).
    pub mode: String,
    /// the target in docs/ARCHITECTURE.md for it, as text.
    pub target: String,
    /// Probe interval of the runs.
    #[serde(rename = "interval_us", with = "crate::lab::traffic::micros")]
    pub interval: Duration,
    /// Each run.
    pub runs: Vec<RunResult>,
}

impl ModeResult {
    /// Lost probes of the longest outage, over the runs.
    pub fn lost_stats(&self) -> Option<Stats<f64>> {
        Stats::of_counts(&self.runs.iter().map(|r| r.lost).collect::<Vec<_>>())
    }

    /// Longest outage, over the runs.
    pub fn outage_stats(&self) -> Option<Stats<Duration>> {
        Stats::of_durations(&self.runs.iter().map(|r| r.outage).collect::<Vec<_>>())
    }
}

/// A measurement that is not about probes (RSS, CPU, apply-to-announced latency).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// What was measured.
    pub name: String,
    /// The value, with its unit (`"6.2 MiB"`).
    pub value: String,
    /// the target in docs/ARCHITECTURE.md, as text.
    pub target: String,
}

/// What the benchmark measured: written as JSON and printed as a table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchmarkReport {
    /// The failure modes.
    pub modes: Vec<ModeResult>,
    /// Other measurements.
    pub metrics: Vec<Metric>,
}

impl BenchmarkReport {
    /// A plain-text table: per mode the runs, lost probes and outage min / median / max,
    /// and the target; then the other metrics.
    pub fn table(&self) -> String {
        let mut rows = vec![[
            "mode".to_owned(),
            "runs".to_owned(),
            "lost min/med/max".to_owned(),
            "outage min/med/max".to_owned(),
            "target".to_owned(),
        ]];
        for m in &self.modes {
            let lost = m.lost_stats().map_or("-".to_owned(), |s| {
                format!("{}/{}/{}", s.min, s.median, s.max)
            });
            let outage = m.outage_stats().map_or("-".to_owned(), |s| {
                format!("{}/{}/{}", secs(s.min), secs(s.median), secs(s.max))
            });
            rows.push([
                m.mode.clone(),
                m.runs.len().to_string(),
                lost,
                outage,
                m.target.clone(),
            ]);
        }
        let mut out = render_table(&rows);
        if !self.metrics.is_empty() {
            out.push('\n');
            let mut rows = vec![["metric".to_owned(), "value".to_owned(), "target".to_owned()]];
            rows.extend(
                self.metrics
                    .iter()
                    .map(|m| [m.name.clone(), m.value.clone(), m.target.clone()]),
            );
            out.push_str(&render_table(&rows));
        }
        out
    }
}

/// `1.234 s`.
fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn render_table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            let _ = writeln!(out, "{}", rule.join("  "));
        }
    }
    out
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ReportError> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    std::fs::write(path, text).map_err(|source| ReportError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Where Debian's fonts-dejavu-core puts its sans font (installed by install-prereqs.sh).
const FONT_FILES: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];
const FONT_FAMILY: &str = "sans-serif";

/// Registers the font once per process; false when no font file could be used.
fn font_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        for file in FONT_FILES {
            let Ok(bytes) = std::fs::read(file) else {
                continue;
            };
            // plotters keeps fonts for the life of the process; registered once.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            match plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, bytes) {
                Ok(()) => return true,
                Err(_) => tracing::warn!(file, "cannot use the font file"),
            }
        }
        tracing::warn!(
            "no font for plot text (install fonts-dejavu-core); plots are drawn without text"
        );
        false
    })
}

/// The lane's name for failed probes.
pub const NO_ANSWER: &str = "no answer";

/// Draws who answered the probes of `log` over time as a PNG of `width`×`height` pixels:
/// one lane per node (in order of first answer) and one for failed probes, a vertical
/// line at every mark, time in seconds since the prober started. Without a font file
/// the plot has no text (title, axis labels, lane names, mark labels).
pub fn plot_png(
    log: &ProbeLog,
    path: &Path,
    title: &str,
    (width, height): (u32, u32),
) -> Result<(), ReportError> {
    if width < 200 || height < 100 {
        return Err(ReportError::PlotSize(width, height));
    }
    let with_text = font_available();
    draw(log, path, title, (width, height), with_text).map_err(|message| ReportError::Plot {
        path: path.display().to_string(),
        message,
    })
}

/// Lane colours: nodes cycle through these; failures are red.
const NODE_COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
];
const FAILURE_COLOUR: RGBColor = RGBColor(214, 39, 40);

fn draw(
    log: &ProbeLog,
    path: &Path,
    title: &str,
    size: (u32, u32),
    with_text: bool,
) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let mut lanes: Vec<&str> = Vec::new();
    for name in log.samples.iter().filter_map(|s| s.outcome.answered_by()) {
        if !lanes.contains(&name) {
            lanes.push(name);
        }
    }
    // Nodes from the top, "no answer" at the bottom (lane 0).
    let lane_of = |s: Option<&str>| match s {
        None => 0usize,
        Some(n) => lanes.len() - lanes.iter().position(|l| *l == n).unwrap_or(0),
    };
    let lane_count = lanes.len() + 1;
    let lane_name = |i: usize| -> String {
        if i == 0 {
            NO_ANSWER.to_owned()
        } else {
            lanes
                .len()
                .checked_sub(i)
                .and_then(|j| lanes.get(j))
                .map_or_else(String::new, |s| (*s).to_owned())
        }
    };

    let interval = log.interval.max(Duration::from_millis(1)).as_secs_f64();
    let end = log
        .samples
        .iter()
        .map(|s| s.sent_at)
        .chain(log.marks.iter().map(|(d, _)| *d))
        .max()
        .unwrap_or_default()
        .as_secs_f64()
        + interval;
    let x_range = 0.0..end.max(0.1);
    // Enough decimals that neighbouring tick labels differ.
    let decimals = if x_range.end < 2.0 { 2 } else { 1 };
    let lanes_top = lane_count as f64 - 0.5;
    // Room above the lanes for the marks' labels.
    let label_room = if with_text && !log.marks.is_empty() {
        0.6
    } else {
        0.0
    };
    let y_range = -0.5..(lanes_top + label_room);

    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15);
    if with_text {
        builder
            .caption(title, (FONT_FAMILY, 22))
            .x_label_area_size(40)
            .y_label_area_size(110);
    }
    let mut chart = builder
        .build_cartesian_2d(x_range.clone(), y_range.clone())
        .map_err(|x| e(&x))?;
    if with_text {
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(lane_count * 2 + 1)
            .y_label_formatter(&|y: &f64| {
                let r = y.round();
                if (y - r).abs() < 0.01 && r >= 0.0 {
                    lane_name(r as usize)
                } else {
                    String::new()
                }
            })
            .x_desc("seconds since the prober started")
            .x_label_formatter(&|x: &f64| format!("{x:.decimals$}"))
            .label_style((FONT_FAMILY, 14))
            .axis_desc_style((FONT_FAMILY, 14))
            .draw()
            .map_err(|x| e(&x))?;
    } else {
        // The same grid without labels: a line every second.
        let grid = RGBColor(220, 220, 220);
        let mut t = 0.0;
        while t <= x_range.end {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(t, y_range.start), (t, y_range.end)],
                    grid,
                )))
                .map_err(|x| e(&x))?;
            t += 1.0;
        }
    }

    // Lane separators.
    chart
        .draw_series((0..lane_count).map(|i| {
            let y = i as f64 - 0.5;
            PathElement::new(vec![(0.0, y), (x_range.end, y)], RGBColor(200, 200, 200))
        }))
        .map_err(|x| e(&x))?;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(0.0, lanes_top), (x_range.end, lanes_top)],
            RGBColor(200, 200, 200),
        )))
        .map_err(|x| e(&x))?;

    // One bar per probe, as wide as the interval.
    chart
        .draw_series(log.samples.iter().map(|s| {
            let who = s.outcome.answered_by();
            let lane = lane_of(who);
            let colour = match who {
                None => FAILURE_COLOUR,
                Some(_) => NODE_COLOURS[(lanes.len() - lane) % NODE_COLOURS.len()],
            };
            let x0 = s.sent_at.as_secs_f64();
            let y = lane as f64;
            Rectangle::new([(x0, y - 0.3), (x0 + interval, y + 0.3)], colour.filled())
        }))
        .map_err(|x| e(&x))?;

    // Marks: a vertical line each, labelled at the top (staggered so labels of close
    // marks don't overlap completely).
    for (i, (at, label)) in log.marks.iter().enumerate() {
        let x = at.as_secs_f64();
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x, y_range.start), (x, y_range.end)],
                BLACK.stroke_width(2),
            )))
            .map_err(|x| e(&x))?;
        if with_text {
            // Pixel offsets: to the right of the line, staggered down so labels of close
            // marks don't overlap completely.
            let (px, py) = chart.plotting_area().map_coordinate(&(x, y_range.end));
            let stagger = (i % 2) as i32 * 16;
            root.draw(&Text::new(
                label.clone(),
                (px + 4, py + 2 + stagger),
                (FONT_FAMILY, 14).into_font().color(&BLACK),
            ))
            .map_err(|x| e(&x))?;
        }
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::traffic::{Outcome, Sample};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A failover and failback: a answers, a gap, b answers, a answers again.
    fn failover_log() -> ProbeLog {
        let mut samples = Vec::new();
        for i in 0..300u64 {
            let outcome = match i {
                0..=99 => Outcome::Answered("node-a".into()),
                100..=124 => Outcome::TimedOut,
                125..=129 => Outcome::Refused,
                130..=219 => Outcome::Answered("node-b".into()),
                _ => Outcome::Answered("node-a".into()),
            };
            samples.push(Sample {
                sent_at: ms(20 * i),
                outcome,
                latency: ms(2),
            });
        }
        ProbeLog {
            interval: ms(20),
            samples,
            marks: vec![
                (ms(1990), "SIGKILL node-a agent".into()),
                (ms(4000), "node-a agent back".into()),
            ],
        }
    }

    #[test]
    fn stats_of_durations() {
        assert_eq!(Stats::of_durations(&[]), None);
        let s = Stats::of_durations(&[ms(30), ms(10), ms(20)]).unwrap();
        assert_eq!(
            (s.count, s.min, s.median, s.max),
            (3, ms(10), ms(20), ms(30))
        );
        let s = Stats::of_durations(&[ms(40), ms(10), ms(20), ms(30)]).unwrap();
        assert_eq!(s.median, ms(25));
        let s = Stats::of_durations(&[ms(7)]).unwrap();
        assert_eq!((s.min, s.median, s.max), (ms(7), ms(7), ms(7)));
    }

    #[test]
    fn stats_of_counts() {
        assert_eq!(Stats::of_counts(&[]), None);
        let s = Stats::of_counts(&[3, 0, 1, 2]).unwrap();
        assert_eq!((s.min, s.median, s.max), (0.0, 1.5, 3.0));
    }

    #[test]
    fn run_results_and_table() {
        let log = failover_log();
        let run = RunResult::from_log(&log);
        assert_eq!(run.lost, 30);
        assert_eq!(run.outage, ms(600));
        assert_eq!(run.answered_by_last.as_deref(), Some("node-a"));
        let quiet = RunResult::from_log(&log.after(ms(2700)));
        assert_eq!((quiet.lost, quiet.outage), (0, Duration::ZERO));
        let report = BenchmarkReport {
            modes: vec![ModeResult {
                mode: "hard: SIGKILL".into(),
                target: "outage <= hold time + 0.5 s".into(),
                interval: ms(20),
                runs: vec![run.clone(), quiet, run],
            }],
            metrics: vec![Metric {
                name: "agent RSS".into(),
                value: "6.1 MiB".into(),
                target: "<= 10 MiB".into(),
            }],
        };
        let s = report.modes[0].outage_stats().unwrap();
        assert_eq!((s.min, s.median, s.max), (Duration::ZERO, ms(600), ms(600)));
        let table = report.table();
        assert!(table.contains("hard: SIGKILL"), "{table}");
        assert!(table.contains("0/30/30"), "{table}");
        assert!(table.contains("0.000 s/0.600 s/0.600 s"), "{table}");
        assert!(table.contains("agent RSS"), "{table}");
        let back: BenchmarkReport =
            serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn json_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.json");
        let log = failover_log();
        write_json(&path, &log).unwrap();
        let back: ProbeLog = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, log);
        assert!(write_json(&dir.path().join("missing/x.json"), &log).is_err());
    }

    /// Width and height from a PNG's IHDR chunk.
    fn png_size(bytes: &[u8]) -> (u32, u32) {
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        (be(&bytes[16..20]), be(&bytes[20..24]))
    }

    #[test]
    fn plot_is_a_png_of_the_requested_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("failover.png");
        plot_png(&failover_log(), &path, "failover and failback", (1000, 360)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 1000);
        assert_eq!(png_size(&bytes), (1000, 360));
        if let Ok(keep) = std::env::var("SHAREDIP_KEEP_PLOT") {
            std::fs::copy(&path, keep).unwrap();
        }
    }

    #[test]
    fn plot_without_text_and_of_an_empty_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain.png");
        draw(&failover_log(), &path, "t", (400, 200), false).unwrap();
        assert_eq!(png_size(&std::fs::read(&path).unwrap()), (400, 200));
        let empty = dir.path().join("empty.png");
        plot_png(&ProbeLog::default(), &empty, "nothing", (300, 150)).unwrap();
        assert_eq!(png_size(&std::fs::read(&empty).unwrap()), (300, 150));
        assert!(matches!(
            plot_png(&ProbeLog::default(), &empty, "x", (10, 10)),
            Err(ReportError::PlotSize(10, 10))
        ));
    }
}
