//! [`bind`]: a server's TCP listener, with an error that names the server, the address
//! and the flag that changes it.

use std::net::SocketAddr;

use shoal_common::{Error, Result};
use tokio::net::TcpListener;

/// Binds `addr` for `what` (e.g. "master gRPC") and returns the listener with the
/// address it really got (a `:0` port resolved). `flag` is the option a user changes
/// when the address is taken.
pub async fn bind(what: &str, addr: &str, flag: &str) -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        Error::io(
            format!("bind the {what} listener {addr} (is another one running? use {flag})"),
            e,
        )
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io(format!("read the {what} listener's address"), e))?;
    Ok((listener, local))
}
