//! Turning a token into an [`Identity`]: the [`Verifier`] trait, and
//! [`RemoteVerifier`], used by servers that do not hold the token table (the runner
//! and workers): the cluster token is checked locally, owner tokens are asked of the
//! master and the answers cached briefly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{BoxFuture, ClusterSecret, Identity, Token};
use shoal_common::{Error, ErrorKind, Result};

/// Decides who a token stands for. `Unauthenticated` for unknown or revoked tokens.
pub trait Verifier: Send + Sync + 'static {
    fn verify(&self, token: Token) -> BoxFuture<'_, Result<Identity>>;
}

/// Asks the token's issuer (the master) who an owner token stands for.
pub type AskIssuer = Arc<dyn Fn(Token) -> BoxFuture<'static, Result<Identity>> + Send + Sync>;

/// How long a verdict on an owner token is reused. A revoked token keeps working
/// this long on the runner and workers (the master itself checks every call).
pub const VERDICT_TTL: Duration = Duration::from_secs(5);
const MAX_CACHED: usize = 10_000;

/// A cached answer: `Err` holds the message of an `Unauthenticated` verdict.
type Verdict = std::result::Result<Identity, String>;

pub struct RemoteVerifier {
    cluster: ClusterSecret,
    issuer: AskIssuer,
    ttl: Duration,
    /// Keyed by token id and secret hash, so a wrong secret never hits a cached verdict.
    cache: Mutex<HashMap<String, (Instant, Verdict)>>,
}

impl RemoteVerifier {
    pub fn new(cluster: ClusterSecret, issuer: AskIssuer) -> RemoteVerifier {
        RemoteVerifier {
            cluster,
            issuer,
            ttl: VERDICT_TTL,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &str) -> Option<Result<Identity>> {
        let c = self.cache.lock().ok()?;
        let (at, v) = c.get(key)?;
        (at.elapsed() < self.ttl).then(|| v.clone().map_err(Error::unauthenticated))
    }

    fn remember(&self, key: String, v: &Result<Identity>) {
        // Only definite answers: an unreachable master is asked again next time.
        let v = match v {
            Ok(id) => Ok(id.clone()),
            Err(e) if e.is(ErrorKind::Unauthenticated) => Err(e.message().to_owned()),
            Err(_) => return,
        };
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= MAX_CACHED {
                let ttl = self.ttl;
                c.retain(|_, (at, _)| at.elapsed() < ttl);
                if c.len() >= MAX_CACHED {
                    c.clear();
                }
            }
            c.insert(key, (Instant::now(), v));
        }
    }
}

impl Verifier for RemoteVerifier {
    fn verify(&self, token: Token) -> BoxFuture<'_, Result<Identity>> {
        Box::pin(async move {
            if self.cluster.matches(&token) {
                return Ok(Identity::Cluster);
            }
            let key = format!("{}:{}", token.id(), token.secret_hash());
            if let Some(v) = self.cached(&key) {
                return v;
            }
            let id = token.id().to_owned();
            let v = (self.issuer)(token).await;
            if let Err(e) = &v {
                tracing::debug!(token = %id, error = %e, "token not accepted");
            }
            self.remember(key, &v);
            v
        })
    }
}

/// Accepts only the cluster token (a component with no issuer to ask).
pub struct ClusterOnly(pub ClusterSecret);

impl Verifier for ClusterOnly {
    fn verify(&self, token: Token) -> BoxFuture<'_, Result<Identity>> {
        Box::pin(async move {
            if self.0.matches(&token) {
                Ok(Identity::Cluster)
            } else {
                Err(Error::unauthenticated(format!(
                    "token {} is not valid here",
                    token.id()
                )))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn cluster_locally_owners_from_the_issuer_cached() {
        let cluster = ClusterSecret::new(Token::generate());
        let good = Token::generate();
        let calls = Arc::new(AtomicUsize::new(0));
        let (g, n) = (good.clone(), calls.clone());
        let issuer: AskIssuer = Arc::new(move |t: Token| {
            n.fetch_add(1, Ordering::SeqCst);
            let ok = t == g;
            Box::pin(async move {
                if ok {
                    Ok(Identity::Owner {
                        name: "a".into(),
                        admin: false,
                    })
                } else {
                    Err(Error::unauthenticated("unknown token"))
                }
            })
        });
        let v = RemoteVerifier::new(cluster.clone(), issuer);
        assert_eq!(
            v.verify(cluster.token().clone()).await.unwrap(),
            Identity::Cluster
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        for _ in 0..3 {
            assert_eq!(v.verify(good.clone()).await.unwrap().owner(), Some("a"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "verdict cached");
        // Same id, another secret: not served from the cache, and refused.
        let forged = Token::parse(&format!("shoal_{}_{}", good.id(), "0".repeat(64))).unwrap();
        assert!(v.verify(forged).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
