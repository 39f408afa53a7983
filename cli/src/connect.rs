//! Finding and connecting to the master (and later the runner), with the error a user
//! can act on when it is not there.

use std::time::Duration;

use anyhow::Context as _;
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

pub fn endpoint(addr: &str) -> anyhow::Result<Endpoint> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    Ok(Endpoint::from_shared(url.clone())
        .with_context(|| format!("invalid address `{addr}`; use HOST:PORT"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(600)))
}

pub async fn master(addr: &str) -> anyhow::Result<MasterServiceClient<Channel>> {
    let ch = endpoint(addr)?.connect().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the master at {addr} ({}); start one with `shoal master` or `shoal up`, or set --master/SHOAL_MASTER",
            transport_cause(&e)
        )
    })?;
    Ok(MasterServiceClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// The innermost cause of a transport error ("Connection refused"), which is the part a
/// user can act on.
fn transport_cause(e: &tonic::transport::Error) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Turns a gRPC status into an error whose text is the server's message alone.
pub fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::Error::new(shoal_common::Error::from(s))
}
