//! The suite's report: every measurement as a [`Row`] with the baseline it is compared
//! with (measured in the same run) and, where shoal has one, the aim
//! (docs/concepts.md); written as `report.md`, `report.json` and `report.svg` (a
//! hand-written bar chart of the ratios, no plotting dependency).

mod svg;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use shoal_common::{Error, Result};

/// The aim a row is compared against (docs/concepts.md, "What shoal aims at").
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Aim {
    /// `ratio` (the row's ratio to its baseline) or `value` (the row's own value).
    pub on: AimOn,
    /// The aim: at least this much (at most, for [`Aim::lower_is_better`]).
    pub target: f64,
    pub lower_is_better: bool,
    /// Which aim it is, named as in docs/concepts.md (`Cold read: ≥ 0.9× ...`).
    pub source: &'static str,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AimOn {
    Ratio,
    Value,
}

impl Aim {
    pub fn ratio(target: f64, source: &'static str) -> Option<Aim> {
        Some(Aim {
            on: AimOn::Ratio,
            target,
            lower_is_better: false,
            source,
        })
    }

    pub fn value(target: f64, source: &'static str) -> Option<Aim> {
        Some(Aim {
            on: AimOn::Value,
            target,
            lower_is_better: false,
            source,
        })
    }
}

/// One measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The scenario (section of the report).
    pub scenario: String,
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    /// What it is compared with, measured in the same run.
    pub baseline_name: String,
    pub baseline: f64,
    /// The baseline's unit: the row's own unless [`Row::baseline_in`] says otherwise.
    pub baseline_unit: &'static str,
    /// `value / baseline`.
    pub ratio: f64,
    pub aim: Option<Aim>,
    /// How far from the aim: the aimed-at quantity over the target (≥ 1 is met; ≤ 1
    /// for lower-is-better aims).
    pub vs_aim: Option<f64>,
    pub met: Option<bool>,
}

impl Row {
    pub fn new(
        scenario: &str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        baseline_name: impl Into<String>,
        baseline: f64,
        aim: Option<Aim>,
    ) -> Row {
        let ratio = if baseline > 0.0 {
            value / baseline
        } else {
            f64::NAN
        };
        let vs_aim = aim.as_ref().map(|a| {
            let x = match a.on {
                AimOn::Ratio => ratio,
                AimOn::Value => value,
            };
            x / a.target
        });
        let met = aim.as_ref().zip(vs_aim).map(|(a, v)| {
            if a.lower_is_better {
                v <= 1.0
            } else {
                v >= 1.0
            }
        });
        Row {
            scenario: scenario.to_owned(),
            name: name.into(),
            value,
            unit,
            baseline_name: baseline_name.into(),
            baseline,
            baseline_unit: unit,
            ratio,
            aim,
            vs_aim,
            met,
        }
    }
}

impl Row {
    /// The baseline is counted in `unit` (processes/s against decisions/s, say).
    pub fn baseline_in(mut self, unit: &'static str) -> Row {
        self.baseline_unit = unit;
        self
    }
}

/// The machine the run was taken on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_bytes: u64,
    pub kernel: String,
}

impl Machine {
    pub fn this() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map_or_else(|| "unknown".into(), |(_, v)| v.trim().to_owned()),
            memory_bytes: meminfo
                .lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(0, |k| k * 1024),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned()),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} CPUs ({}), {:.0} GiB RAM, Linux {}",
            self.cpus,
            self.cpu_model,
            self.memory_bytes as f64 / (1u64 << 30) as f64,
            self.kernel
        )
    }
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    /// The command line and sizes the run used.
    pub settings: serde_json::Value,
    pub profile: &'static str,
    pub secs: f64,
    pub rows: Vec<Row>,
    /// Caveats that hold for the whole run (permissions, what shares a process).
    pub notes: Vec<String>,
}

/// What [`Report::write`] produced.
pub struct Written {
    pub markdown: PathBuf,
    pub json: PathBuf,
    pub svg: PathBuf,
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "MB/s" => format!("{:.0} MB/s", v / 1e6),
        "bytes" => format!("{:.0} MiB", v / (1u64 << 20) as f64),
        _ if v >= 100.0 => format!("{v:.0} {unit}"),
        _ => format!("{v:.2} {unit}"),
    }
}

fn fmt_ratio(r: f64) -> String {
    if !r.is_finite() {
        "-".into()
    } else if r >= 10.0 {
        format!("{r:.1}×")
    } else {
        format!("{r:.2}×")
    }
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# shoal benchmark report\n");
        let _ = writeln!(
            s,
            "Machine: {}. Build profile: {}. Run time: {:.0} s.\n",
            self.machine.describe(),
            self.profile,
            self.secs
        );
        let _ = writeln!(
            s,
            "Every figure is compared with a baseline measured in this run; the ratio is value / baseline. Aims are shoal's own (docs/concepts.md); *vs aim* is the aimed-at quantity over the aim (≥ 1 means met).\n"
        );
        let mut scenarios: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !scenarios.contains(&r.scenario.as_str()) {
                scenarios.push(&r.scenario);
            }
        }
        for sc in scenarios {
            let _ = writeln!(s, "## {sc}\n");
            let _ = writeln!(
                s,
                "| measurement | value | baseline | ratio | aim | vs aim |"
            );
            let _ = writeln!(s, "|---|---:|---|---:|---|---:|");
            for r in self.rows.iter().filter(|r| r.scenario == sc) {
                let aim = r.aim.as_ref().map_or_else(String::new, |a| {
                    let what = match a.on {
                        AimOn::Ratio => format!("{}×", a.target),
                        AimOn::Value => fmt_value(a.target, r.unit),
                    };
                    format!("{} {what}", if a.lower_is_better { "≤" } else { "≥" })
                });
                let vs = match (r.vs_aim, r.met) {
                    (Some(v), Some(m)) => format!("{v:.2} {}", if m { "met" } else { "not met" }),
                    _ => String::new(),
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} ({}) | {} | {aim} | {vs} |",
                    r.name,
                    fmt_value(r.value, r.unit),
                    r.baseline_name,
                    fmt_value(r.baseline, r.baseline_unit),
                    fmt_ratio(r.ratio),
                );
            }
            let _ = writeln!(s);
        }
        let aimed: Vec<&Row> = self.rows.iter().filter(|r| r.aim.is_some()).collect();
        if !aimed.is_empty() {
            let _ = writeln!(s, "## shoal's aims (docs/concepts.md)\n");
            let _ = writeln!(s, "| aim | measurement | got | vs aim |");
            let _ = writeln!(s, "|---|---|---:|---:|");
            for r in aimed {
                let (Some(a), Some(v), Some(m)) = (&r.aim, r.vs_aim, r.met) else {
                    continue;
                };
                let got = match a.on {
                    AimOn::Ratio => fmt_ratio(r.ratio),
                    AimOn::Value => fmt_value(r.value, r.unit),
                };
                let _ = writeln!(
                    s,
                    "| {} | {}: {} | {got} | {v:.2} ({}) |",
                    a.source,
                    r.scenario,
                    r.name,
                    if m { "met" } else { "not met" }
                );
            }
            let _ = writeln!(s);
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "## Notes\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(
            s,
            "Settings: `{}`",
            serde_json::to_string(&self.settings).unwrap_or_default()
        );
        s
    }

    pub fn json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map_err(|e| Error::internal(format!("serialise the report: {e}")))
    }

    pub fn svg(&self) -> String {
        svg::chart(self)
    }

    /// Writes `report.md`, `report.json` and `report.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<Written> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let w = Written {
            markdown: dir.join("report.md"),
            json: dir.join("report.json"),
            svg: dir.join("report.svg"),
        };
        let put = |p: &Path, text: String| {
            std::fs::write(p, text).map_err(|e| Error::io(format!("write {}", p.display()), e))
        };
        put(&w.markdown, self.markdown())?;
        put(&w.json, self.json()?)?;
        put(&w.svg, self.svg())?;
        Ok(w)
    }

    /// Why the report is not sane, if it is not: every row has a finite positive value
    /// and baseline, every `expected` scenario has rows, and the three files parse
    /// back (the JSON as JSON, the SVG as one `<svg>` element). What CI checks; never
    /// speed.
    pub fn check(&self, expected: &[&str], written: &Written) -> Result<()> {
        let mut problems = Vec::new();
        for sc in expected {
            if !self.rows.iter().any(|r| r.scenario == *sc) {
                problems.push(format!("no rows for scenario `{sc}`"));
            }
        }
        for r in &self.rows {
            if !(r.value.is_finite() && r.value > 0.0) {
                problems.push(format!("{} / {}: value {}", r.scenario, r.name, r.value));
            }
            if !(r.baseline.is_finite() && r.baseline > 0.0 && r.ratio.is_finite()) {
                problems.push(format!(
                    "{} / {}: baseline {}",
                    r.scenario, r.name, r.baseline
                ));
            }
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        match serde_json::from_str::<serde_json::Value>(&read(&written.json)) {
            Ok(v) if v["rows"].as_array().map(Vec::len) == Some(self.rows.len()) => {}
            Ok(_) => problems.push("report.json has the wrong number of rows".into()),
            Err(e) => problems.push(format!("report.json does not parse: {e}")),
        }
        let md = read(&written.markdown);
        if self.rows.iter().any(|r| !md.contains(&r.name)) {
            problems.push("report.md misses rows".into());
        }
        let svg = read(&written.svg);
        if !(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>")) {
            problems.push("report.svg is not an SVG document".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::internal(format!(
                "the report is not sane: {}",
                problems.join("; ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            machine: Machine {
                cpus: 2,
                cpu_model: "test".into(),
                memory_bytes: 24 << 30,
                kernel: "6.18".into(),
            },
            settings: serde_json::json!({"scale": 1}),
            profile: "release",
            secs: 12.0,
            rows: vec![
                Row::new(
                    "read path",
                    "mount warm, 1 reader",
                    1.6e9,
                    "MB/s",
                    "native tmpfs",
                    2.0e9,
                    Aim::ratio(0.8, "warm read ≥ 0.8× native"),
                ),
                Row::new(
                    "small files",
                    "warm read",
                    4000.0,
                    "files/s",
                    "native tmpfs",
                    10000.0,
                    Aim::value(5000.0, "≥ 5k files/s"),
                ),
            ],
            notes: vec!["page cache dropped".into()],
        }
    }

    #[test]
    fn rows_compare_with_baseline_and_aim() {
        let r = report();
        assert_eq!(r.rows[0].ratio, 0.8);
        assert_eq!(r.rows[0].met, Some(true));
        assert_eq!(r.rows[1].vs_aim, Some(0.8));
        assert_eq!(r.rows[1].met, Some(false));
    }

    #[test]
    fn markdown_has_sections_tables_and_the_aims_summary() {
        let md = report().markdown();
        assert!(md.contains("## read path\n"), "{md}");
        assert!(
            md.contains("| mount warm, 1 reader | 1600 MB/s | native tmpfs (2000 MB/s) | 0.80× | ≥ 0.8× | 1.00 met |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| ≥ 5k files/s | small files: warm read | 4000 files/s | 0.80 (not met) |"
            ),
            "{md}"
        );
        assert!(md.contains("2 CPUs (test), 24 GiB RAM, Linux 6.18"), "{md}");
    }

    #[test]
    fn written_files_pass_the_check_and_a_broken_row_fails_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = report();
        let w = r.write(dir.path()).unwrap();
        r.check(&["read path", "small files"], &w).unwrap();
        let e = r.check(&["scheduler"], &w).unwrap_err().to_string();
        assert!(e.contains("no rows for scenario `scheduler`"), "{e}");
        r.rows
            .push(Row::new("x", "zero", 0.0, "MB/s", "b", 1.0, None));
        let w = r.write(dir.path()).unwrap();
        let e = r.check(&[], &w).unwrap_err().to_string();
        assert!(e.contains("x / zero: value 0"), "{e}");
    }
}
