//! Optional TLS for every shoal connection: gRPC listeners and channels (tonic) and the
//! framed-TCP data plane (tokio-rustls), from one [`TlsConfig`].
//!
//! - A server with `cert` and `key` (PEM, `--tls-cert`/`--tls-key`) serves TLS only.
//! - A client with `ca` (PEM, `--ca`) connects with TLS and trusts that CA alone; a
//!   client without one connects in plain text. Certificates must name the address
//!   clients use (an IP address or a DNS name as subject alternative name).
//! - [`hint`] turns a failed handshake into the fix, for the one-line errors of `main`.
//!
//! rustls uses the workspace's one crypto provider, aws-lc-rs.
//!
//! ```no_run
//! use shoal_wire::tls::TlsConfig;
//! # fn demo() -> shoal_common::Result<()> {
//! let tls = TlsConfig { ca: Some("ca.pem".into()), ..TlsConfig::default() };
//! let endpoint = tls.endpoint("10.0.0.5:7700")?; // https://10.0.0.5:7700, trusting ca.pem
//! # let _ = endpoint; Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
pub use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use serde::Deserialize;
use shoal_common::{Error, Result};

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS settings of one process: what it serves with and what it trusts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain the servers of this process present. Needs `key`.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// PEM CA certificate(s) this process trusts as a client; when set, every
    /// connection it opens uses TLS.
    pub ca: Option<PathBuf>,
}

impl TlsConfig {
    /// `cert` and `key` come together.
    pub fn validate(&self) -> Result<()> {
        match (&self.cert, &self.key) {
            (Some(_), None) | (None, Some(_)) => Err(Error::invalid(
                "--tls-cert and --tls-key go together: give both (PEM files) or neither",
            )),
            _ => Ok(()),
        }
    }

    /// True when the servers of this process serve TLS.
    pub fn serves_tls(&self) -> bool {
        self.cert.is_some()
    }

    /// True when the connections this process opens use TLS.
    pub fn connects_with_tls(&self) -> bool {
        self.ca.is_some()
    }

    fn server_pem(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.validate()?;
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            return Ok(None);
        };
        let cert_pem = read(cert, "--tls-cert")?;
        let key_pem = read(key, "--tls-key")?;
        // Parse now, so a wrong file fails at start with its name.
        certs(&cert_pem, cert, "--tls-cert")?;
        private_key(&key_pem, key)?;
        Ok(Some((cert_pem, key_pem)))
    }

    /// The gRPC server's TLS settings, or `None` to serve plain text.
    pub fn server(&self) -> Result<Option<ServerTlsConfig>> {
        Ok(self.server_pem()?.map(|(cert, key)| {
            ServerTlsConfig::new()
                .identity(Identity::from_pem(cert, key))
                .timeout(HANDSHAKE_TIMEOUT)
        }))
    }

    /// A tonic server builder that serves TLS when `cert`/`key` are set.
    pub fn server_builder(&self) -> Result<tonic::transport::Server> {
        let builder = tonic::transport::Server::builder();
        match self.server()? {
            Some(tls) => builder
                .tls_config(tls)
                .map_err(|e| Error::invalid(format!("--tls-cert/--tls-key cannot be used: {e}"))),
            None => Ok(builder),
        }
    }

    /// The data plane's TLS acceptor, or `None` to serve plain TCP.
    pub fn acceptor(&self) -> Result<Option<TlsAcceptor>> {
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            self.validate()?;
            return Ok(None);
        };
        let chain = certs(&read(cert, "--tls-cert")?, cert, "--tls-cert")?;
        let key_der = private_key(&read(key, "--tls-key")?, key)?;
        let cfg = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| {
                Error::invalid(format!(
                    "--tls-cert {} and --tls-key {} do not make a usable pair: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
        Ok(Some(TlsAcceptor::from(Arc::new(cfg))))
    }

    /// The data plane's TLS connector (trusting `ca` only), or `None` for plain TCP.
    pub fn connector(&self) -> Result<Option<TlsConnector>> {
        let Some(ca) = &self.ca else {
            return Ok(None);
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&read(ca, "--ca")?, ca, "--ca")? {
            roots.add(c).map_err(|e| {
                Error::invalid(format!("--ca {}: not a CA certificate: {e}", ca.display()))
            })?;
        }
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Some(TlsConnector::from(Arc::new(cfg))))
    }

    /// A gRPC endpoint for `addr` (`HOST:PORT`, or a URL): `https://` trusting `ca`
    /// when one is set, `http://` otherwise. No timeouts are set here.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint> {
        let host_port = addr
            .strip_prefix("http://")
            .or_else(|| addr.strip_prefix("https://"))
            .unwrap_or(addr);
        let bad = |e: &dyn std::fmt::Display| {
            Error::invalid(format!("invalid address `{addr}`: {e}; use HOST:PORT"))
        };
        match &self.ca {
            None => Endpoint::from_shared(format!("http://{host_port}")).map_err(|e| bad(&e)),
            Some(ca) => {
                let pem = read(ca, "--ca")?;
                certs(&pem, ca, "--ca")?;
                let tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(pem))
                    .timeout(HANDSHAKE_TIMEOUT);
                Endpoint::from_shared(format!("https://{host_port}"))
                    .map_err(|e| bad(&e))?
                    .tls_config(tls)
                    .map_err(|e| bad(&e))
            }
        }
    }
}

/// The name a TLS client checks the server's certificate against: the host part of
/// `HOST:PORT` (an IP address or a DNS name).
pub fn server_name(addr: &str) -> Result<ServerName<'static>> {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h,
        None => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|e| Error::invalid(format!("`{host}` is not a host name for TLS: {e}")))
}

/// What to do about a connection that failed with `cause` (the innermost error text),
/// if it looks like a TLS mismatch.
pub fn hint(cause: &str, tls: &TlsConfig) -> Option<&'static str> {
    let c = cause.to_ascii_lowercase();
    if c.contains("unknownissuer") || c.contains("unknown issuer") || c.contains("badsignature") {
        return Some(
            "the server's certificate is not signed by the CA given with --ca; pass the CA that signed it (--ca FILE or SHOAL_CA)",
        );
    }
    if c.contains("notvalidforname") || c.contains("not valid for name") {
        return Some(
            "the server's certificate does not name the address used; reissue it with that host or IP as a subject alternative name, or connect by a name it has",
        );
    }
    if tls.connects_with_tls()
        && (c.contains("invalidcontenttype")
            || c.contains("corrupt message")
            || c.contains("invalid content type"))
    {
        return Some(
            "the server does not speak TLS; drop --ca, or start it with --tls-cert/--tls-key",
        );
    }
    if !tls.connects_with_tls()
        && (c.contains("connection reset")
            || c.contains("broken pipe")
            || c.contains("unexpected eof")
            || c.contains("end of file")
            || c.contains("frame")
            || c.contains("http2")
            || c.contains("h2 protocol")
            || c.contains("connection closed")
            // hyper's word for a request whose connection the server dropped
            || c.contains("operation was canceled"))
    {
        return Some(
            "if the server uses TLS (--tls-cert), connect with TLS by passing the CA that signed its certificate: --ca FILE or SHOAL_CA",
        );
    }
    None
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::invalid(format!(
            "{flag} {}: cannot read it ({e}); give a readable PEM file",
            path.display()
        ))
    })
}

fn certs(pem: &[u8], path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>> {
    let list = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::invalid(format!(
                "{flag} {}: not a PEM certificate file: {e}",
                path.display()
            ))
        })?;
    if list.is_empty() {
        return Err(Error::invalid(format!(
            "{flag} {}: no `BEGIN CERTIFICATE` block in it",
            path.display()
        )));
    }
    Ok(list)
}

fn private_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        Error::invalid(format!(
            "--tls-key {}: no PEM private key in it ({e})",
            path.display()
        ))
    })
}

// --- The `[...]` section of the configuration file (raw, optional values) ---

/// `[tls]`: PEM files; see `crate::tls::TlsConfig`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsToml {
    /// Certificate chain the servers of this process present (with `key`).
    pub cert: Option<String>,
    /// Private key of `cert`.
    pub key: Option<String>,
    /// CA that clients trust; set, every connection uses TLS.
    pub ca: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_and_key_go_together_and_bad_files_are_named() {
        let only_cert = TlsConfig {
            cert: Some("c.pem".into()),
            ..TlsConfig::default()
        };
        let e = only_cert.validate().unwrap_err().to_string();
        assert!(e.contains("go together"), "{e}");
        let d = tempfile_dir();
        let junk = d.join("junk.pem");
        std::fs::write(&junk, "not pem").unwrap();
        let t = TlsConfig {
            ca: Some(junk.clone()),
            ..TlsConfig::default()
        };
        let e = t.endpoint("127.0.0.1:1").unwrap_err().to_string();
        assert!(
            e.contains("junk.pem") && e.contains("BEGIN CERTIFICATE"),
            "{e}"
        );
        let missing = TlsConfig {
            ca: Some(d.join("nope.pem")),
            ..TlsConfig::default()
        };
        let e = missing.connector().err().unwrap().to_string();
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn generated_pair_builds_every_side() {
        let d = tempfile_dir();
        let ca = rcgen::CertifiedIssuer::self_signed(
            {
                let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
                p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
                p
            },
            rcgen::KeyPair::generate().unwrap(),
        )
        .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(d.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(d.join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(d.join("key.pem"), key.serialize_pem()).unwrap();
        let t = TlsConfig {
            cert: Some(d.join("cert.pem")),
            key: Some(d.join("key.pem")),
            ca: Some(d.join("ca.pem")),
        };
        assert!(t.server().unwrap().is_some());
        assert!(t.acceptor().unwrap().is_some());
        assert!(t.connector().unwrap().is_some());
        let ep = t.endpoint("127.0.0.1:7700").unwrap();
        assert_eq!(ep.uri().scheme_str(), Some("https"));
        let plain = TlsConfig::default()
            .endpoint("http://127.0.0.1:7700")
            .unwrap();
        assert_eq!(plain.uri().scheme_str(), Some("http"));
        assert!(server_name("127.0.0.1:7711").is_ok());
        assert!(server_name("worker-1.local:7711").is_ok());
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "shoal-tls-test-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
