//! Credentials of the `shoal` binary: the caller's token for user commands
//! ([`user_token`]) and the cluster token for server commands ([`cluster_token`]).
//! Token files must be private (0600); a readable one is refused with the `chmod` that
//! fixes it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use shoal_wire::auth::{Token, load_or_create_token_file, read_token_file};

use crate::cmd::Context;
use crate::cmd::master::default_data_dir;

/// Where user commands look for a token when neither `SHOAL_TOKEN` nor the config file
/// names one: `~/.config/shoal/token`, then the admin tokens a local `shoal up` or
/// `shoal master` (or a standalone `shoal runner`) wrote on first start.
fn default_token_files() -> Vec<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    let mut v = Vec::new();
    if let Some(c) = config {
        v.push(c.join("shoal").join("token"));
    }
    v.push(default_data_dir("up").join("master").join("admin.token"));
    v.push(default_data_dir("master").join("admin.token"));
    v.push(default_data_dir("runner").join("admin.token"));
    v
}

/// `SHOAL_TOKEN` > `[client] token` > `[client] token_file` > the default files.
/// `None` when there is none (servers will answer "this call needs a token").
pub fn user_token(ctx: &Context) -> anyhow::Result<Option<Token>> {
    if let Some(v) = std::env::var_os("SHOAL_TOKEN") {
        let v = v.to_string_lossy();
        if !v.trim().is_empty() {
            return Token::parse(&v).map(Some).context("read SHOAL_TOKEN");
        }
    }
    if let Some(t) = &ctx.file.client.token {
        return Token::parse(t)
            .map(Some)
            .context("read `token` in the config file");
    }
    if let Some(f) = &ctx.file.client.token_file {
        return Ok(Some(read_token_file(Path::new(f))?));
    }
    for p in default_token_files() {
        if p.exists() {
            return Ok(Some(read_token_file(&p)?));
        }
    }
    Ok(None)
}

/// The cluster token of a server command: `--cluster-token-file` > the config file's
/// `cluster_token_file` > `default` (the local master's `cluster.token`). A file named
/// explicitly must exist (with `create`, it is created); the default may be absent
/// (`None`), and then calls that need the token fail with a hint.
pub fn cluster_token(
    flag: Option<PathBuf>,
    file: Option<&String>,
    default: PathBuf,
    create: bool,
) -> anyhow::Result<Option<(Token, PathBuf)>> {
    let explicit = flag.or_else(|| file.map(PathBuf::from));
    let path = match explicit {
        Some(p) => p,
        None if default.exists() => default,
        None => return Ok(None),
    };
    let token = if create {
        load_or_create_token_file(&path)?.0
    } else {
        if !path.exists() {
            anyhow::bail!(
                "no cluster token at {}: pass --cluster-token-file with the master's DATA_DIR/cluster.token (copied with mode 0600)",
                path.display()
            );
        }
        read_token_file(&path)?
    };
    Ok(Some((token, path)))
}

/// What to say when a server command found no cluster token.
pub const NO_CLUSTER_TOKEN: &str = "no cluster token: pass --cluster-token-file (or SHOAL_CLUSTER_TOKEN_FILE) with the master's DATA_DIR/cluster.token, copied with mode 0600";

/// The default cluster token file: the local master's.
pub fn default_cluster_token_file() -> PathBuf {
    default_data_dir("master").join("cluster.token")
}
