//! Finding and connecting to the master (and later the runner), with the error a user
//! can act on when it is not there.

use std::sync::OnceLock;
use std::time::Duration;

use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_proto::v1::runner_service_client::RunnerServiceClient;
use shoal_wire::auth::{AuthChannel, Token, with_token};
use shoal_wire::tls::TlsConfig;
use tonic::transport::Endpoint;

use crate::cmd::Context;

pub const DEFAULT_MASTER: &str = "127.0.0.1:7700";

/// `--master`/`SHOAL_MASTER` (resolved by clap) > `[client] master` in the file > default.
pub fn master_addr(ctx: &Context, flag: Option<&str>) -> String {
    flag.map(str::to_owned)
        .or_else(|| ctx.file.client.master.clone())
        .unwrap_or_else(|| DEFAULT_MASTER.to_owned())
}

/// The TLS settings of this command's connections (`--ca`), set once by `main`.
static TLS: OnceLock<TlsConfig> = OnceLock::new();

pub fn set_tls(tls: TlsConfig) {
    let _ = TLS.set(tls);
}

pub fn tls() -> TlsConfig {
    TLS.get().cloned().unwrap_or_default()
}

pub fn endpoint(addr: &str) -> anyhow::Result<Endpoint> {
    Ok(tls()
        .endpoint(addr)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(600)))
}

/// The message for a server that cannot be reached: the cause, then the TLS fix when
/// the cause is a TLS mismatch, else `otherwise`.
pub fn unreachable(
    what: &str,
    addr: &str,
    e: &tonic::transport::Error,
    otherwise: &str,
) -> anyhow::Error {
    let cause = transport_cause(e);
    let fix = shoal_wire::tls::hint(&cause, &tls()).unwrap_or(otherwise);
    anyhow::Error::new(shoal_common::Error::unavailable(format!(
        "cannot reach the {what} at {addr} ({cause}); {fix}"
    )))
}

/// The master at `--master` (or the config/default), with the caller's token.
pub async fn user_master(
    ctx: &Context,
    flag: Option<&str>,
) -> anyhow::Result<MasterServiceClient<AuthChannel>> {
    let token = crate::auth::user_token(ctx)?;
    master(&master_addr(ctx, flag), token.as_ref()).await
}

/// A runner client over `ch`, with `token`.
pub fn runner_client(
    ch: tonic::transport::Channel,
    token: Option<&Token>,
) -> RunnerServiceClient<AuthChannel> {
    RunnerServiceClient::new(with_token(ch, token))
}

pub async fn master(
    addr: &str,
    token: Option<&Token>,
) -> anyhow::Result<MasterServiceClient<AuthChannel>> {
    let ch = endpoint(addr)?.connect().await.map_err(|e| {
        unreachable(
            "master",
            addr,
            &e,
            "start one with `shoal master` or `shoal up`, or set --master/SHOAL_MASTER",
        )
    })?;
    Ok(MasterServiceClient::new(with_token(ch, token))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// The innermost cause of a transport error ("Connection refused"), which is the part a
/// user can act on.
pub fn transport_cause(e: &tonic::transport::Error) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Turns a gRPC status into an error whose text is the server's message, plus how to
/// fix it when the call was refused, or when it failed on a TLS mismatch (a lazily
/// connected channel reports that on the first call rather than at connect).
pub fn status(s: tonic::Status) -> anyhow::Error {
    if matches!(
        s.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Cancelled
    ) {
        let mut text = s.message().to_owned();
        let mut innermost = text.clone();
        let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(&s);
        while let Some(c) = cur {
            innermost = c.to_string();
            text.push_str(": ");
            text.push_str(&innermost);
            cur = c.source();
        }
        if let Some(fix) = shoal_wire::tls::hint(&text, &tls()) {
            return anyhow::anyhow!("the connection to the server failed ({innermost}); {fix}");
        }
    }
    let e = shoal_common::Error::from(s);
    let m = e.message().to_owned();
    // The shoal error stays in the chain (for the exit code); `one_line` does not repeat
    // its text, which the hint already quotes.
    match e.kind() {
        shoal_common::ErrorKind::Unauthenticated => anyhow::Error::new(e).context(format!(
            "not authenticated: {m}. Set SHOAL_TOKEN to your token (an admin issues one with `shoal token create --owner NAME`; `shoal up` prints its admin token), or put it in ~/.config/shoal/token with mode 0600"
        )),
        shoal_common::ErrorKind::PermissionDenied => anyhow::Error::new(e).context(format!(
            "permission denied: {m}. Use a token of the right owner, or ask an admin (an admin token can do everything)"
        )),
        _ => anyhow::Error::new(e),
    }
}
