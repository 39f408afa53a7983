//! `shoal cat DATASET/PATH` and `shoal cp DATASET/PATH LOCAL`: read a file through the
//! cache without FUSE, using the same client library as the mount.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use shoal_client::{ClientConfig, ShoalClient};
use tokio::io::AsyncWriteExt;

use super::Context;
use super::dataset::MasterFlag;
use crate::connect;

#[derive(Args)]
pub struct CatArgs {
    /// DATASET/PATH inside the dataset.
    #[arg(value_name = "DATASET/PATH")]
    source: String,
    #[command(flatten)]
    client: ClientFlags,
}

#[derive(Args)]
pub struct CpArgs {
    /// DATASET/PATH inside the dataset.
    #[arg(value_name = "DATASET/PATH")]
    source: String,
    /// Local destination file (or directory, to keep the file name).
    #[arg(value_name = "LOCAL")]
    dest: PathBuf,
    #[command(flatten)]
    client: ClientFlags,
}

#[derive(Args)]
pub struct ClientFlags {
    #[command(flatten)]
    m: MasterFlag,
    /// The node this client runs on: a worker of this node name is read directly even
    /// if it reports another host id (workers on this machine are read directly
    /// anyway) [default: host name].
    #[arg(long, env = "SHOAL_NODE")]
    node: Option<String>,
}

fn split_source(s: &str) -> anyhow::Result<(&str, &str)> {
    let s = s.trim_start_matches('/');
    match s.split_once('/') {
        Some((d, p)) if !d.is_empty() && !p.is_empty() => Ok((d, p)),
        _ => anyhow::bail!("`{s}` is not DATASET/PATH, e.g. imagenet/train/0001.jpg"),
    }
}

async fn client(ctx: &Context, f: &ClientFlags) -> anyhow::Result<ShoalClient> {
    let mut cfg = ClientConfig::new(&connect::master_addr(ctx, f.m.master.as_deref()));
    // Reading through workers needs an admin token; owners read through the mounts of
    // their jobs. The UFS fallback needs the dataset's credentials, which the master
    // gives the cluster identity only, so with an admin token a file no worker can
    // serve is an error rather than a direct store read.
    cfg.token = crate::auth::user_token(ctx)?;
    cfg.node = f
        .node
        .clone()
        .or_else(|| ctx.file.client.node.clone())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        });
    cfg.name = "cli".into();
    cfg.tls = ctx.tls.clone();
    ShoalClient::connect(cfg).await.map_err(|e| {
        anyhow::anyhow!(
            "{e}; start a master with `shoal master` or `shoal up`, or set --master/SHOAL_MASTER"
        )
    })
}

pub async fn cat(ctx: &Context, a: CatArgs) -> anyhow::Result<ExitCode> {
    let (dataset, path) = split_source(&a.source)?;
    let c = client(ctx, &a.client).await?;
    let (ds, file) = c.lookup(dataset, path).await?;
    let mut out = Counted {
        inner: tokio::io::stdout(),
        written: 0,
    };
    match c.read_to(&ds, &file, &mut out).await {
        // The file changed in the store before anything was printed: open it again
        // once, as a reader that reopens would. Once bytes are out, stopping is the
        // only way not to print a mix of two versions.
        Err(e) if e.is(shoal_common::ErrorKind::Stale) && out.written == 0 => {
            let (ds, file) = c.lookup_again(dataset, path).await?;
            c.read_to(&ds, &file, &mut out).await?;
        }
        Err(e) if e.is(shoal_common::ErrorKind::Stale) => {
            out.flush().await?;
            // Let the catalogue learn the store's current version, so the next
            // command gets it without waiting for a sync.
            let _ = c.lookup_again(dataset, path).await;
            return Err(anyhow::Error::new(e).context(format!(
                "`{}` changed in the store while it was being printed: the {} bytes printed are the start of the old version; run the command again for the new one",
                a.source, out.written
            )));
        }
        r => {
            r?;
        }
    }
    out.flush().await?;
    Ok(ExitCode::SUCCESS)
}

/// A writer that counts what went through it.
struct Counted<W> {
    inner: W,
    written: u64,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            self.written += *n as u64;
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub async fn cp(ctx: &Context, a: CpArgs) -> anyhow::Result<ExitCode> {
    let (dataset, path) = split_source(&a.source)?;
    let c = client(ctx, &a.client).await?;
    let (ds, file) = c.lookup(dataset, path).await.map_err(|e| {
        if e.is(shoal_common::ErrorKind::IsADirectory) {
            anyhow::Error::new(e).context(format!(
                "`{}` is a directory; shoal cp copies single files",
                a.source
            ))
        } else {
            e.into()
        }
    })?;
    let dest = if a.dest.is_dir() {
        a.dest.join(path.rsplit('/').next().unwrap_or(path))
    } else {
        a.dest.clone()
    };
    // Write to a temporary name and rename, so an interrupted copy never leaves a
    // truncated file under the final name.
    let tmp = dest.with_extension(format!(
        "{}shoal-partial",
        dest.extension()
            .map(|e| format!("{}.", e.to_string_lossy()))
            .unwrap_or_default()
    ));
    let mut f = tokio::fs::File::create(&tmp)
        .await
        .with_context(|| format!("create {}", tmp.display()))?;
    let mut r = c.read_to(&ds, &file, &mut f).await;
    if r.as_ref()
        .is_err_and(|e| e.is(shoal_common::ErrorKind::Stale))
    {
        // The file changed in the store mid-copy: start again, once, from its current
        // version (the temporary file is rewritten from the start).
        r = match c.lookup_again(dataset, path).await {
            Ok((ds, file)) => match f.set_len(0).await {
                Ok(()) => {
                    use tokio::io::AsyncSeekExt;
                    match f.rewind().await {
                        Ok(_) => c.read_to(&ds, &file, &mut f).await,
                        Err(e) => Err(shoal_common::Error::io("rewind the copy", e)),
                    }
                }
                Err(e) => Err(shoal_common::Error::io("truncate the copy", e)),
            },
            Err(e) => Err(e),
        };
    }
    if let Err(e) = r {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e.into());
    }
    f.sync_all()
        .await
        .with_context(|| format!("sync {}", tmp.display()))?;
    tokio::fs::rename(&tmp, &dest)
        .await
        .with_context(|| format!("rename {} to {}", tmp.display(), dest.display()))?;
    Ok(ExitCode::SUCCESS)
}
