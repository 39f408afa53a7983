//! Turning a token into an [`Identity`]: the [`Verifier`] trait, and
//! [`RemoteVerifier`], used by servers that do not hold the token table (the runner
//! and workers): the cluster token is checked locally, owner tokens are asked of the
//! master and the answers cached briefly.
//!
//! A master that is down or hung must not stop reads that were allowed a moment ago
//! (a job's mount reading through a worker): once an accepting verdict expired, the
//! master gets [`VERIFY_WAIT`] to answer again; if it does not (or cannot be
//! reached), the last verdict stands for up to [`VERDICT_GRACE`] and the master is not
//! asked for a second. A definite answer (the token was revoked) always wins, so
//! revocation keeps working whenever the master can say so.

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

/// How long an expired accepting verdict may stand in while the master does not answer.
pub const VERDICT_GRACE: Duration = Duration::from_secs(600);
/// How long the master is given when an expired accepting verdict could stand in.
pub const VERIFY_WAIT: Duration = Duration::from_millis(300);
/// After the master did not answer in [`VERIFY_WAIT`], how long expired verdicts are
/// used without asking it.
const MASTER_BACKOFF: Duration = Duration::from_secs(1);

/// A cached answer: `Err` holds the message of an `Unauthenticated` verdict.
type Verdict = std::result::Result<Identity, String>;

pub struct RemoteVerifier {
    cluster: ClusterSecret,
    issuer: AskIssuer,
    ttl: Duration,
    /// Keyed by token id and secret hash, so a wrong secret never hits a cached verdict.
    cache: Mutex<HashMap<String, (Instant, Verdict)>>,
    /// Until when expired verdicts are used without asking the master.
    master_away_until: Mutex<Option<Instant>>,
}

impl RemoteVerifier {
    pub fn new(cluster: ClusterSecret, issuer: AskIssuer) -> RemoteVerifier {
        RemoteVerifier {
            cluster,
            issuer,
            ttl: VERDICT_TTL,
            cache: Mutex::new(HashMap::new()),
            master_away_until: Mutex::new(None),
        }
    }

    /// The identity of an expired accepting verdict still within its grace.
    fn stale_accept(&self, key: &str) -> Option<Identity> {
        let c = self.cache.lock().ok()?;
        match c.get(key)? {
            (at, Ok(id)) if at.elapsed() < self.ttl + VERDICT_GRACE => Some(id.clone()),
            _ => None,
        }
    }

    fn master_away(&self) -> bool {
        self.master_away_until
            .lock()
            .is_ok_and(|g| g.is_some_and(|until| Instant::now() < until))
    }

    fn set_master_away(&self, away: bool) {
        if let Ok(mut g) = self.master_away_until.lock() {
            *g = away.then(|| Instant::now() + MASTER_BACKOFF);
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
                c.retain(|_, (at, _)| at.elapsed() < ttl + VERDICT_GRACE);
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
            let stale = self.stale_accept(&key);
            let v = match stale {
                None => (self.issuer)(token).await,
                Some(stale) if self.master_away() => return Ok(stale),
                Some(stale) => {
                    match tokio::time::timeout(VERIFY_WAIT, (self.issuer)(token)).await {
                        Ok(v) if v.as_ref().is_ok() || is_verdict(&v) => v,
                        answer => {
                            let why = match answer {
                                Ok(Err(e)) => e.to_string(),
                                _ => format!("no answer within {VERIFY_WAIT:?}"),
                            };
                            tracing::debug!(token = %id, %why,
                            "master unavailable; the token's last verdict stands");
                            self.set_master_away(true);
                            return Ok(stale);
                        }
                    }
                }
            };
            if let Err(e) = &v {
                tracing::debug!(token = %id, error = %e, "token not accepted");
            }
            if v.is_ok() || is_verdict(&v) {
                self.set_master_away(false);
            }
            self.remember(key, &v);
            v
        })
    }
}

/// Whether `v` is the master's refusal of the token (as opposed to no answer).
fn is_verdict(v: &Result<Identity>) -> bool {
    matches!(v, Err(e) if e.is(ErrorKind::Unauthenticated))
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

    /// A master that stops answering keeps allowed tokens allowed (after one short
    /// wait, then none for a second); one that answers "revoked" is obeyed at once.
    #[tokio::test]
    async fn expired_verdicts_stand_while_the_master_is_away_and_revocation_wins() {
        use std::sync::atomic::AtomicU8;
        const ACCEPT: u8 = 0;
        const HANG: u8 = 1;
        const DOWN: u8 = 2;
        const REVOKED: u8 = 3;
        let mode = Arc::new(AtomicU8::new(ACCEPT));
        let calls = Arc::new(AtomicUsize::new(0));
        let (m, n) = (mode.clone(), calls.clone());
        let issuer: AskIssuer = Arc::new(move |_t: Token| {
            n.fetch_add(1, Ordering::SeqCst);
            let mode = m.load(Ordering::SeqCst);
            Box::pin(async move {
                match mode {
                    ACCEPT => Ok(Identity::Owner {
                        name: "a".into(),
                        admin: false,
                    }),
                    HANG => std::future::pending().await,
                    DOWN => Err(Error::unavailable("master unreachable")),
                    _ => Err(Error::unauthenticated("token revoked")),
                }
            })
        });
        let mut v = RemoteVerifier::new(ClusterSecret::new(Token::generate()), issuer);
        v.ttl = Duration::from_millis(50);
        let good = Token::generate();
        assert!(v.verify(good.clone()).await.is_ok());
        let expire = || tokio::time::sleep(Duration::from_millis(60));

        // Hung master: one wait of VERIFY_WAIT, then the old verdict, then no wait.
        mode.store(HANG, Ordering::SeqCst);
        expire().await;
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(2), v.verify(good.clone())).await;
        assert_eq!(
            r.expect("waited for a silent master").unwrap().owner(),
            Some("a")
        );
        let waited = t.elapsed();
        assert!(
            waited >= VERIFY_WAIT && waited < VERIFY_WAIT * 3,
            "{waited:?}"
        );
        let before = calls.load(Ordering::SeqCst);
        let t = Instant::now();
        assert!(v.verify(good.clone()).await.is_ok());
        assert!(t.elapsed() < Duration::from_millis(100));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            before,
            "asked a master known away"
        );

        // Unreachable master: the same, once the backoff is over.
        mode.store(DOWN, Ordering::SeqCst);
        tokio::time::sleep(MASTER_BACKOFF).await;
        assert!(v.verify(good.clone()).await.is_ok());

        // The master is back and says the token was revoked: refused at once.
        mode.store(REVOKED, Ordering::SeqCst);
        tokio::time::sleep(MASTER_BACKOFF).await;
        let e = v.verify(good.clone()).await.unwrap_err();
        assert!(e.is(ErrorKind::Unauthenticated), "{e}");
        // A revoked token has no accepting verdict left to stand in: with the master
        // silent again it is not let through.
        mode.store(HANG, Ordering::SeqCst);
        expire().await;
        let r = tokio::time::timeout(Duration::from_millis(500), v.verify(good.clone())).await;
        assert!(!matches!(r, Ok(Ok(_))), "a revoked token was accepted");

        // A token never accepted gets no grace: a silent master is waited for.
        let unknown = Token::generate();
        let r = tokio::time::timeout(Duration::from_millis(500), v.verify(unknown)).await;
        assert!(
            r.is_err(),
            "an unknown token was answered without the master"
        );
    }
}
