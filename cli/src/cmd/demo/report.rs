//! What `shoal demo` measured and how it is shown: the cold vs warm table, the JSON of
//! `-o json`, and the prewarm's progress bar.

use std::time::Duration;

use serde_json::json;
use shoal_common::size::human_bytes;

use super::endpoint::LinkProfile;
use super::{PREFIX, Plan, store};

/// One fan-out run, measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Run {
    pub secs: f64,
    /// Bytes the workers read from the store during the run (their metrics).
    pub ufs_bytes: u64,
    /// Object bytes that crossed the simulated link during the run.
    pub link_bytes: u64,
    /// Requests the store answered during the run.
    pub store_requests: u64,
    /// Bytes the instances read (every file once).
    pub read_bytes: u64,
}

impl Run {
    /// The share of the bytes read that came from the cache instead of the store.
    pub fn hit_ratio(&self) -> f64 {
        if self.read_bytes == 0 {
            return 0.0;
        }
        (1.0 - self.ufs_bytes as f64 / self.read_bytes as f64).clamp(0.0, 1.0)
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "job_secs": self.secs,
            "ufs_read_bytes": self.ufs_bytes,
            "link_bytes": self.link_bytes,
            "store_requests": self.store_requests,
            "read_bytes": self.read_bytes,
            "cache_hit_ratio": self.hit_ratio(),
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prewarm {
    pub secs: f64,
    pub bytes: u64,
    pub ufs_bytes: u64,
}

/// Everything the table shows.
#[derive(Clone, Debug)]
pub struct Summary {
    pub plan: Plan,
    /// The embedded S3 endpoint's address.
    pub endpoint: String,
    pub cold: Run,
    pub prewarm: Prewarm,
    pub warm: Run,
    /// Bytes read back through the mount after the warm run and found equal to the
    /// generated content.
    pub verified_bytes: u64,
}

impl Summary {
    fn speedup(&self) -> f64 {
        self.cold.secs / self.warm.secs.max(1e-9)
    }

    fn prewarm_rate(&self) -> f64 {
        self.prewarm.bytes as f64 / self.prewarm.secs.max(1e-9)
    }

    pub fn json(&self) -> serde_json::Value {
        let p = &self.plan;
        json!({
            "dataset": {
                "files": p.files,
                "bytes": p.bytes(),
                "uri": format!("s3://{}/{PREFIX}", store::BUCKET),
                "verified_bytes": self.verified_bytes,
            },
            "store": {
                "kind": "embedded S3 endpoint over a local directory (in this process, SigV4 checked)",
                "endpoint": self.endpoint,
            },
            "link": {
                "simulated": true,
                "first_byte_ms": p.link.first_byte.as_millis() as u64,
                "bandwidth_bytes_per_sec": p.link.bandwidth,
            },
            "instances": p.instances,
            "workers": p.workers,
            "cold": self.cold.json(),
            "prewarm": {
                "secs": self.prewarm.secs,
                "bytes": self.prewarm.bytes,
                "ufs_read_bytes": self.prewarm.ufs_bytes,
                "bytes_per_sec": self.prewarm_rate(),
                "fraction_of_link": (p.link.bandwidth > 0)
                    .then(|| self.prewarm_rate() / p.link.bandwidth as f64),
            },
            "warm": self.warm.json(),
            "speedup": self.speedup(),
        })
    }

    pub fn render(&self) -> String {
        let p = &self.plan;
        let pct = |r: f64| format!("{:.1}%", r * 100.0);
        let rows = [
            (
                "job time",
                format!("{:.2} s", self.cold.secs),
                format!("{:.2} s", self.warm.secs),
            ),
            (
                "UFS bytes read",
                human_bytes(self.cold.ufs_bytes),
                human_bytes(self.warm.ufs_bytes),
            ),
            (
                "bytes over the link",
                human_bytes(self.cold.link_bytes),
                human_bytes(self.warm.link_bytes),
            ),
            (
                "cache hit ratio",
                pct(self.cold.hit_ratio()),
                pct(self.warm.hit_ratio()),
            ),
            ("speedup", String::new(), format!("{:.1}x", self.speedup())),
        ];
        let mut out = format!(
            "\n{} instances read {} files ({}) from s3://{}/{PREFIX} through a shoal mount on {} worker(s).\nThe bucket is an S3 endpoint embedded in this process, over a simulated {} link.\n\n",
            p.instances,
            p.files,
            human_bytes(p.bytes()),
            store::BUCKET,
            p.workers,
            link_name(&p.link),
        );
        out.push_str(&format!(
            "  {:<20} {:>12} {:>17}\n",
            "", "cold", "warm (prewarmed)"
        ));
        for (name, cold, warm) in rows {
            out.push_str(&format!("  {name:<20} {cold:>12} {warm:>17}\n"));
        }
        let cap = if p.link.bandwidth > 0 {
            format!(
                ", {:.2} of the link's {:.0} MB/s",
                self.prewarm_rate() / p.link.bandwidth as f64,
                p.link.bandwidth as f64 / 1e6
            )
        } else {
            String::new()
        };
        out.push_str(&format!(
            "\nprewarm: {} in {:.2} s ({:.1} MB/s{cap}); hit ratio = share of the bytes read not fetched from the store\n",
            human_bytes(self.prewarm.bytes),
            self.prewarm.secs,
            self.prewarm_rate() / 1e6,
        ));
        out.push_str(&format!(
            "checked: {} read back through the mount, identical to the generated dataset\n",
            human_bytes(self.verified_bytes)
        ));
        out
    }
}

/// `20 ms / 400 Mbit/s`.
fn link_name(l: &LinkProfile) -> String {
    let bw = if l.bandwidth == 0 {
        "unlimited".to_owned()
    } else {
        format!("{} Mbit/s", l.bandwidth * 8 / 1_000_000)
    };
    format!("{} ms / {bw}", l.first_byte.as_millis())
}

/// A byte progress bar on a terminal; a line per quarter otherwise (CI logs).
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    quarter: std::sync::atomic::AtomicU64,
}

impl Progress {
    pub fn new() -> Progress {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(0);
            let style = indicatif::ProgressStyle::with_template(
                "      [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
            b.set_style(style);
            b.enable_steady_tick(Duration::from_millis(100));
            b
        });
        Progress {
            bar,
            quarter: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn update(&self, done: u64, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(done);
        } else if let Some(q) = (done * 4).checked_div(total)
            && q > self
                .quarter
                .fetch_max(q, std::sync::atomic::Ordering::Relaxed)
        {
            eprintln!("      {}% ({})", q * 25, human_bytes(done));
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn summary() -> Summary {
        Summary {
            plan: Plan {
                files: 32,
                file_size: 8 * MIB,
                instances: 8,
                workers: 2,
                link: LinkProfile {
                    first_byte: Duration::from_millis(20),
                    bandwidth: 400_000_000 / 8,
                },
            },
            endpoint: "http://127.0.0.1:9".into(),
            cold: Run {
                secs: 6.4,
                ufs_bytes: 256 * MIB,
                link_bytes: 257 * MIB,
                store_requests: 70,
                read_bytes: 256 * MIB,
            },
            prewarm: Prewarm {
                secs: 5.6,
                bytes: 256 * MIB,
                ufs_bytes: 256 * MIB,
            },
            warm: Run {
                secs: 0.8,
                ufs_bytes: 0,
                link_bytes: 0,
                store_requests: 0,
                read_bytes: 256 * MIB,
            },
            verified_bytes: 256 * MIB,
        }
    }

    #[test]
    fn table_shows_cold_warm_and_speedup() {
        let out = summary().render();
        let lines: Vec<&str> = out.lines().collect();
        let table = [
            "                               cold  warm (prewarmed)",
            "  job time                   6.40 s            0.80 s",
            "  UFS bytes read          256.0 MiB               0 B",
            "  bytes over the link     257.0 MiB               0 B",
            "  cache hit ratio              0.0%            100.0%",
            "  speedup                                        8.0x",
        ];
        let at = lines
            .iter()
            .position(|l| *l == table[0])
            .unwrap_or_else(|| panic!("no header in {out}"));
        assert_eq!(lines[at..at + table.len()], table, "{out}");
        assert!(
            out.contains(
                "an S3 endpoint embedded in this process, over a simulated 20 ms / 400 Mbit/s link"
            ),
            "{out}"
        );
        assert!(out.contains("0.96 of the link's 50 MB/s"), "{out}");
        assert!(out.contains("checked: 256.0 MiB read back"), "{out}");
    }

    #[test]
    fn json_carries_the_same_numbers() {
        let j = summary().json();
        assert_eq!(j["cold"]["ufs_read_bytes"], 256 * MIB);
        assert_eq!(j["warm"]["cache_hit_ratio"], 1.0);
        assert_eq!(j["speedup"], 8.0);
        assert_eq!(j["link"]["bandwidth_bytes_per_sec"], 50_000_000);
        assert_eq!(j["link"]["simulated"], true);
        assert_eq!(j["dataset"]["verified_bytes"], 256 * MIB);
        assert_eq!(j["cold"]["store_requests"], 70);
    }

    #[test]
    fn hit_ratio_is_clamped_and_defined_for_no_reads() {
        let r = Run {
            ufs_bytes: 10,
            read_bytes: 5,
            ..Default::default()
        };
        assert_eq!(r.hit_ratio(), 0.0);
        assert_eq!(Run::default().hit_ratio(), 0.0);
    }
}
