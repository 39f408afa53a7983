//! Finding and connecting to the master (and later the runner), with the error a user
//! can act on when it is not there.

use std::sync::OnceLock;
use std::time::Duration;

use shoal_common::tls::TlsConfig;
use shoal_proto::v1::master_service_client::MasterServiceClient;
use tonic::transport::{Channel, Endpoint};

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
    let fix = shoal_common::tls::hint(&cause, &tls()).unwrap_or(otherwise);
    anyhow::anyhow!("cannot reach the {what} at {addr} ({cause}); {fix}")
}

pub async fn master(addr: &str) -> anyhow::Result<MasterServiceClient<Channel>> {
    let ch = endpoint(addr)?.connect().await.map_err(|e| {
        unreachable(
            "master",
            addr,
            &e,
            "start one with `shoal master` or `shoal up`, or set --master/SHOAL_MASTER",
        )
    })?;
    Ok(MasterServiceClient::new(ch)
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

/// Turns a gRPC status into an error whose text is the server's message alone, plus
/// the fix when the call failed on a TLS mismatch (a lazily connected channel reports
/// it on the first call rather than at connect).
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
        if let Some(fix) = shoal_common::tls::hint(&text, &tls()) {
            return anyhow::anyhow!("the connection to the server failed ({innermost}); {fix}");
        }
    }
    anyhow::Error::new(shoal_common::Error::from(s))
}
