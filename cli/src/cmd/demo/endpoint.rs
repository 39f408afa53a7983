//! The demo's object store: an S3 endpoint embedded in this process, serving one
//! bucket from a local directory on 127.0.0.1 behind a simulated far-away link.
//!
//! The protocol (request routing, SigV4 verification, XML) is the `s3s` crate's; the
//! operations are ours ([`backend`]), read-only, over files the demo wrote. Requests
//! must be signed with the access key generated at start: shoal's master and workers
//! reach it exactly as they reach a real bucket, credentials included.

mod backend;
mod link;
mod listing;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use shoal_common::{Error, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use link::LinkProfile;

/// The region the endpoint's clients sign for (it has no other).
pub const REGION: &str = "us-east-1";

/// A running endpoint; stops serving when dropped.
pub struct S3Endpoint {
    addr: SocketAddr,
    bucket: String,
    access_key_id: String,
    secret_access_key: String,
    link: Arc<link::Link>,
    cancel: CancellationToken,
}

/// A fresh random key pair, so that only this process's clients can read the bucket.
fn generate_keys() -> (String, String) {
    let id: [u8; 8] = rand::random();
    let secret: [u8; 30] = rand::random();
    (
        format!("SHOALDEMO{}", hex::encode_upper(id)),
        hex::encode(secret),
    )
}

impl S3Endpoint {
    /// Serves `root` as bucket `bucket` on a free port of 127.0.0.1.
    pub async fn start(bucket: &str, root: PathBuf, profile: LinkProfile) -> Result<S3Endpoint> {
        if !root.is_dir() {
            return Err(Error::invalid(format!(
                "the S3 endpoint's directory {} does not exist",
                root.display()
            )));
        }
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::io("bind the demo's S3 endpoint on 127.0.0.1", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("the demo's S3 endpoint address", e))?;
        let (access_key_id, secret_access_key) = generate_keys();
        let link = Arc::new(link::Link::new(profile));
        let mut builder = S3ServiceBuilder::new(backend::DirBackend::new(
            bucket.to_owned(),
            root,
            link.clone(),
        ));
        builder.set_auth(SimpleAuth::from_single(
            access_key_id.clone(),
            secret_access_key.clone(),
        ));
        let service = builder.build();
        let cancel = CancellationToken::new();
        tokio::spawn(serve(listener, service, cancel.clone()));
        Ok(S3Endpoint {
            addr,
            bucket: bucket.to_owned(),
            access_key_id,
            secret_access_key,
            link,
            cancel,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `s3://BUCKET/PREFIX` (`s3://BUCKET` for an empty prefix).
    pub fn uri(&self, prefix: &str) -> String {
        match prefix.trim_matches('/') {
            "" => format!("s3://{}", self.bucket),
            p => format!("s3://{}/{p}", self.bucket),
        }
    }

    /// The dataset options (opendal's S3 keys) that reach this endpoint.
    pub fn options(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("endpoint".to_owned(), self.endpoint()),
            ("region".to_owned(), REGION.to_owned()),
            ("access_key_id".to_owned(), self.access_key_id.clone()),
            (
                "secret_access_key".to_owned(),
                self.secret_access_key.clone(),
            ),
        ])
    }

    /// Object bytes sent to clients so far (they all crossed the simulated link).
    pub fn bytes_down(&self) -> u64 {
        self.link.bytes_down()
    }

    /// Requests the backend answered so far (a request whose signature is refused never
    /// reaches it).
    pub fn requests(&self) -> u64 {
        self.link.responses()
    }
}

impl Drop for S3Endpoint {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Accepts connections until `cancel`, each served by hyper's HTTP/1 server.
async fn serve(listener: TcpListener, service: s3s::service::S3Service, cancel: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors, say: back off instead of spinning.
                    tracing::warn!(error = %e, "demo S3 endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (service, cancel) = (service.clone(), cancel.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                () = cancel.cancelled() => {}
                r = conn => if let Err(e) = r {
                    tracing::debug!(error = %e, "demo S3 endpoint: connection ended");
                }
            }
        });
    }
}
