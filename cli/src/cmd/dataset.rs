//! `shoal dataset create|list|show|update|refresh|delete|grant|revoke`.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use shoal_common::size::human_bytes;
use shoal_proto::v1::{
    CreateDatasetRequest, Dataset, DatasetConsistency, DatasetGrants, DeleteDatasetRequest,
    GetDatasetRequest, GrantDatasetRequest, ListDatasetsRequest, RefreshDatasetRequest,
    RevokeDatasetGrantRequest, UpdateDatasetRequest,
};

use super::Context;
use crate::connect;
use crate::output::{OutputFormat, Table, print_fields, print_json};

#[derive(Args, Clone)]
pub struct MasterFlag {
    /// Master address (HOST:PORT) [default: 127.0.0.1:7700].
    #[arg(long, env = "SHOAL_MASTER", value_name = "HOST:PORT", global = true)]
    pub master: Option<String>,
}

/// What an open of a dataset's file checks against the store.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Consistency {
    /// Opens use the metadata as last synced (fast; no store call per open).
    Cached,
    /// Every open stats the file in the store first (close-to-open, like NFS).
    Strict,
}

impl Consistency {
    fn proto(self) -> DatasetConsistency {
        match self {
            Consistency::Cached => DatasetConsistency::Cached,
            Consistency::Strict => DatasetConsistency::Strict,
        }
    }
}

/// `--sync-interval`: a duration, or 0/off for none.
fn parse_interval(s: &str) -> Result<u64, String> {
    if matches!(s.trim(), "0" | "off" | "none") {
        return Ok(0);
    }
    let d = shoal_common::time::parse_duration(s).map_err(|e| e.to_string())?;
    u64::try_from(d.as_millis()).map_err(|_| format!("sync interval `{s}` is too long"))
}

#[derive(Subcommand)]
pub enum DatasetCommand {
    /// Register a dataset over an object-store prefix or a directory, and sync its file list.
    Create {
        /// Dataset name: letters, digits, `-`, `_`, `.`.
        name: String,
        /// s3://bucket/prefix, file:///path or memory://
        uri: String,
        /// Store option as key=value, using opendal's keys (endpoint, region,
        /// access_key_id, secret_access_key, ...). Repeatable.
        #[arg(long = "option", value_name = "KEY=VALUE")]
        options: Vec<String>,
        /// Allow writes through mounts (default: read-only).
        #[arg(long)]
        read_write: bool,
        /// Re-list the store this often (e.g. 30s, 5m), so objects added, changed or
        /// deleted in it show in mounts without `shoal dataset refresh` [default: off].
        #[arg(long, value_name = "DURATION", value_parser = parse_interval, default_value = "off")]
        sync_interval: u64,
        /// What each open checks: `cached` uses the metadata as last synced; `strict`
        /// stats the file in the store at every open (one request per open).
        #[arg(long, value_enum, default_value = "cached")]
        consistency: Consistency,
        #[command(flatten)]
        m: MasterFlag,
    },
    /// Change a dataset's sync interval or consistency mode (admin only).
    Update {
        name: String,
        /// Re-list the store this often; 0 or `off` stops periodic syncs.
        #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
        sync_interval: Option<u64>,
        /// `cached` or `strict` (see `shoal dataset create --help`).
        #[arg(long, value_enum)]
        consistency: Option<Consistency>,
        #[command(flatten)]
        m: MasterFlag,
    },
    /// List datasets with their status.
    List {
        #[command(flatten)]
        m: MasterFlag,
    },
    /// Show one dataset: options (credentials hidden), file count, sizes, cache status.
    Show {
        name: String,
        #[command(flatten)]
        m: MasterFlag,
    },
    /// Re-sync a dataset's file list from its store.
    Refresh {
        name: String,
        #[command(flatten)]
        m: MasterFlag,
    },
    /// Remove a dataset from the catalogue (its data in the store is untouched).
    Delete {
        name: String,
        #[command(flatten)]
        m: MasterFlag,
    },
    /// Share a dataset with an owner (admin only): read, or with --write also change it.
    Grant {
        name: String,
        /// The owner to share with.
        #[arg(long)]
        owner: String,
        /// Read only (the default).
        #[arg(long, conflicts_with = "write")]
        read: bool,
        /// Read and write (namespace changes through mounts).
        #[arg(long)]
        write: bool,
        #[command(flatten)]
        m: MasterFlag,
    },
    /// Stop sharing a dataset with an owner (admin only).
    Revoke {
        name: String,
        #[arg(long)]
        owner: String,
        #[command(flatten)]
        m: MasterFlag,
    },
}

pub fn parse_options(raw: &[String]) -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for kv in raw {
        let Some((k, v)) = kv.split_once('=') else {
            anyhow::bail!(
                "invalid --option `{kv}`: write it as key=value, e.g. --option endpoint=http://127.0.0.1:9000"
            );
        };
        let k = k.trim();
        if k.is_empty() {
            anyhow::bail!("invalid --option `{kv}`: the key is empty");
        }
        if out.insert(k.to_owned(), v.to_owned()).is_some() {
            anyhow::bail!("--option `{k}` given twice");
        }
    }
    Ok(out)
}

/// A spinner on stderr while a long call runs, only when stderr is a terminal.
fn spinner(msg: String) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(100));
    pb
}

pub async fn run(ctx: &Context, c: DatasetCommand) -> anyhow::Result<ExitCode> {
    match c {
        DatasetCommand::Create {
            name,
            uri,
            options,
            read_write,
            sync_interval,
            consistency,
            m,
        } => {
            let options = parse_options(&options)?;
            let mut client = connect::user_master(ctx, m.master.as_deref()).await?;
            let pb = spinner(format!("creating `{name}` and listing {uri}"));
            let r = client
                .create_dataset(CreateDatasetRequest {
                    name,
                    uri,
                    options,
                    read_write,
                    sync_interval_ms: sync_interval,
                    consistency: consistency.proto() as i32,
                })
                .await;
            pb.finish_and_clear();
            let d = r.map_err(connect::status)?.into_inner();
            match ctx.output {
                OutputFormat::Json => print_json(&dataset_json(&d))?,
                OutputFormat::Table => {
                    let s = d.status.clone().unwrap_or_default();
                    println!(
                        "created dataset `{}`: {} files, {} from {}",
                        d.name,
                        s.file_count,
                        human_bytes(s.ufs_total_bytes),
                        d.uri
                    );
                }
            }
        }
        DatasetCommand::List { m } => {
            let mut client = connect::user_master(ctx, m.master.as_deref()).await?;
            let ds = client
                .list_datasets(ListDatasetsRequest {})
                .await
                .map_err(connect::status)?
                .into_inner()
                .datasets;
            match ctx.output {
                OutputFormat::Json => {
                    print_json(&json!(ds.iter().map(dataset_json).collect::<Vec<_>>()))?
                }
                OutputFormat::Table => {
                    let mut t = Table::new([
                        "NAME", "URI", "MODE", "PHASE", "FILES", "SIZE", "CACHED", "CACHED%",
                    ]);
                    for d in &ds {
                        let s = d.status.clone().unwrap_or_default();
                        t.row(vec![
                            d.name.clone(),
                            d.uri.clone(),
                            mode(d).into(),
                            s.phase().label().into(),
                            s.file_count.to_string(),
                            human_bytes(s.ufs_total_bytes),
                            human_bytes(s.cached_bytes),
                            format!("{:.1}", s.cached_percent),
                        ]);
                    }
                    t.print()?;
                }
            }
        }
        DatasetCommand::Show { name, m } => {
            let mut client = connect::user_master(ctx, m.master.as_deref()).await?;
            let d = client
                .get_dataset(GetDatasetRequest { name })
                .await
                .map_err(connect::status)?
                .into_inner();
            match ctx.output {
                OutputFormat::Json => print_json(&dataset_json(&d))?,
                OutputFormat::Table => print_fields(&show_fields(&d))?,
            }
        }
        DatasetCommand::Update {
            name,
            sync_interval,
            consistency,
            m,
        } => {
            if sync_interval.is_none() && consistency.is_none() {
                anyhow::bail!(
                    "nothing to change: give --sync-interval and/or --consistency (see `shoal dataset update --help`)"
                );
            }
            let mut client = connect::user_master(ctx, m.master.as_deref()).await?;
            let d = client
                .update_dataset(UpdateDatasetRequest {
                    name,
                    sync_interval_ms: sync_interval,
                    consistency: consistency.map(|c| c.proto() as i32),
                })
                .await
                .map_err(connect::status)?
                .into_inner();
            match ctx.output {
                OutputFormat::Json => print_json(&dataset_json(&d))?,
                OutputFormat::Table => print_fields(&show_fields(&d))?,
            }
        }
        DatasetCommand::Refresh { name, m } => {
            let mut client = connect::user_master(ctx, m.master.as_deref()).await?;
            let pb = spinner(format!("refreshing `{name}`"));
            let r = client.refresh_dataset(RefreshDatasetRequest { name }).await;
            pb.finish_and_clear();
            let d = r.map_err(connect::status)?.into_inner();
            match ctx.output {
                OutputFormat::Json => print_json(&dataset_json(&d))?,
                OutputFormat::Table => {
                    let s = d.status.clone().unwrap_or_default();
                    println!(
                        "refreshed `{}`: {} files, {}",
                        d.name,
                        s.file_count,
                        human_bytes(s.ufs_total_bytes)
                    );
                }
            }
        }
        DatasetCommand::Delete { name, m } => {
            let mut client = connect::user_master(ctx, m.master.as_deref()).await?;
            client
                .delete_dataset(DeleteDatasetRequest { name: name.clone() })
                .await
                .map_err(connect::status)?;
            match ctx.output {
                OutputFormat::Json => print_json(&json!({ "deleted": name }))?,
                OutputFormat::Table => println!("deleted dataset `{name}`"),
            }
        }
        DatasetCommand::Grant {
            name,
            owner,
            read: _,
            write,
            m,
        } => {
            let mut client = connect::user_master(ctx, m.master.as_deref()).await?;
            let g = client
                .grant_dataset(GrantDatasetRequest {
                    dataset: name,
                    owner,
                    write,
                })
                .await
                .map_err(connect::status)?
                .into_inner();
            print_grants(ctx, &g)?;
        }
        DatasetCommand::Revoke { name, owner, m } => {
            let mut client = connect::user_master(ctx, m.master.as_deref()).await?;
            let g = client
                .revoke_dataset_grant(RevokeDatasetGrantRequest {
                    dataset: name,
                    owner,
                })
                .await
                .map_err(connect::status)?
                .into_inner();
            print_grants(ctx, &g)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_grants(ctx: &Context, g: &DatasetGrants) -> anyhow::Result<()> {
    match ctx.output {
        OutputFormat::Json => print_json(&json!({
            "dataset": g.dataset,
            "grants": g.grants.iter().map(|x| json!({"owner": x.owner, "write": x.write})).collect::<Vec<_>>(),
        })),
        OutputFormat::Table => {
            let mut t = Table::new(["OWNER", "ACCESS"]);
            for x in &g.grants {
                t.row(vec![
                    x.owner.clone(),
                    if x.write { "read-write" } else { "read" }.into(),
                ]);
            }
            println!("dataset `{}` is shared with:", g.dataset);
            t.print()?;
            Ok(())
        }
    }
}

fn mode(d: &Dataset) -> &'static str {
    if d.read_write { "rw" } else { "ro" }
}

/// `30s`, `5m`, or `off`.
fn interval_display(ms: u64) -> String {
    if ms == 0 {
        return "off".into();
    }
    if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn consistency_label(d: &Dataset) -> &'static str {
    match d.consistency() {
        DatasetConsistency::Strict => "strict",
        _ => "cached",
    }
}

fn options_display(d: &Dataset) -> String {
    let mut parts: Vec<String> = d.options.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.extend(d.redacted_options.iter().map(|k| format!("{k}=<hidden>")));
    parts.sort();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

fn show_fields(d: &Dataset) -> Vec<(&'static str, String)> {
    let s = d.status.clone().unwrap_or_default();
    let mut f = vec![
        ("name", d.name.clone()),
        ("uri", d.uri.clone()),
        ("mode", mode(d).into()),
        ("options", options_display(d)),
        ("sync_interval", interval_display(d.sync_interval_ms)),
        ("consistency", consistency_label(d).into()),
        ("phase", s.phase().label().into()),
        ("files", s.file_count.to_string()),
        (
            "ufs_total_bytes",
            format!("{} ({})", s.ufs_total_bytes, human_bytes(s.ufs_total_bytes)),
        ),
        (
            "cached_bytes",
            format!("{} ({})", s.cached_bytes, human_bytes(s.cached_bytes)),
        ),
        ("cached_percent", format!("{:.1}", s.cached_percent)),
        ("cache_capacity", human_bytes(s.cache_capacity_bytes)),
        ("hit_ratio", format!("{:.3}", s.hit_ratio)),
    ];
    if !s.message.is_empty() {
        f.push(("message", s.message.clone()));
    }
    f
}

pub fn dataset_json(d: &Dataset) -> serde_json::Value {
    let s = d.status.clone().unwrap_or_default();
    json!({
        "id": d.id,
        "name": d.name,
        "uri": d.uri,
        "read_write": d.read_write,
        "options": d.options,
        "redacted_options": d.redacted_options,
        "sync_interval_ms": d.sync_interval_ms,
        "consistency": consistency_label(d),
        "status": {
            "phase": s.phase().label(),
            "ufs_total_bytes": s.ufs_total_bytes,
            "file_count": s.file_count,
            "cached_bytes": s.cached_bytes,
            "cached_percent": s.cached_percent,
            "cache_capacity_bytes": s.cache_capacity_bytes,
            "hit_ratio": s.hit_ratio,
            "cache_hits": s.cache_hits,
            "cache_misses": s.cache_misses,
            "message": s.message,
        },
        "created_at_ms": d.created_at_ms,
        "refreshed_at_ms": d.refreshed_at_ms,
    })
}
