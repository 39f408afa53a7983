//! [`Dial`]: how a process reaches the master, a worker or the runner over gRPC.
//!
//! Every client is connected lazily (a process starts while its peer is down, and the
//! first call connects), carries the caller's token on every call, uses TLS when a CA
//! is configured, and has a connect and a request deadline, so no call waits forever.

use std::time::Duration;

use shoal_common::Result;
use shoal_common::auth::Token;
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_proto::v1::runner_service_client::RunnerServiceClient;
use shoal_proto::v1::worker_service_client::WorkerServiceClient;

use crate::auth::{AuthChannel, with_token};
use crate::tls::TlsConfig;

/// Largest gRPC message a client decodes or encodes (a page of file entries, a job
/// with all its instances).
pub const MAX_MESSAGE: usize = 64 << 20;

/// The settings every client of one process shares.
#[derive(Clone, Debug)]
pub struct Dial {
    pub tls: TlsConfig,
    pub token: Option<Token>,
    pub connect_timeout: Duration,
    /// Deadline of each call.
    pub request_timeout: Duration,
}

impl Dial {
    /// Connect and request deadlines both `timeout`.
    pub fn new(tls: &TlsConfig, token: Option<&Token>, timeout: Duration) -> Dial {
        Dial {
            tls: tls.clone(),
            token: token.cloned(),
            connect_timeout: timeout,
            request_timeout: timeout,
        }
    }

    /// A lazily connected channel to `addr` (`HOST:PORT`) with the token on every call.
    pub fn channel(&self, addr: &str) -> Result<AuthChannel> {
        let ep = self
            .tls
            .endpoint(addr)?
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout);
        Ok(with_token(ep.connect_lazy(), self.token.as_ref()))
    }

    pub fn master(&self, addr: &str) -> Result<MasterServiceClient<AuthChannel>> {
        let ch = self
            .channel(addr)
            .map_err(|e| e.context("master address"))?;
        Ok(MasterServiceClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    pub fn worker(&self, addr: &str) -> Result<WorkerServiceClient<AuthChannel>> {
        let ch = self
            .channel(addr)
            .map_err(|e| e.context("worker address"))?;
        Ok(WorkerServiceClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    pub fn runner(&self, addr: &str) -> Result<RunnerServiceClient<AuthChannel>> {
        let ch = self
            .channel(addr)
            .map_err(|e| e.context("runner address"))?;
        Ok(RunnerServiceClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }
}
