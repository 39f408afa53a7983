//! The servers' authentication boundary: a tower layer in front of every gRPC service
//! that verifies the bearer token of each request and records the caller's
//! [`Identity`] in the request's extensions. Handlers read it with [`identity`] and
//! decide what the caller may do; a request without a verified identity never reaches
//! a handler.

use std::sync::Arc;
use std::task::{Context, Poll};

use super::{AUTHORIZATION, BoxFuture, Identity, Token, Verifier};
use shoal_common::{Error, Result};

/// Wraps services so that every call is authenticated by `verifier`.
#[derive(Clone)]
pub struct AuthLayer {
    verifier: Arc<dyn Verifier>,
}

impl AuthLayer {
    pub fn new(verifier: Arc<dyn Verifier>) -> AuthLayer {
        AuthLayer { verifier }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    verifier: Arc<dyn Verifier>,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, std::result::Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The clone is the one that was not polled ready; keep the ready one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        let header = req
            .headers()
            .get(AUTHORIZATION)
            .map(|v| v.to_str().map(str::to_owned));
        Box::pin(async move {
            let verified = match header {
                None => Err(Error::unauthenticated(
                    "this call needs a token: send `authorization: Bearer shoal_<id>_<secret>` (the shoal CLI reads SHOAL_TOKEN or its token file)",
                )),
                Some(Err(_)) => Err(Error::unauthenticated(
                    "the authorization header is not text",
                )),
                Some(Ok(v)) => match parse_bearer(&v) {
                    Ok(t) => verifier.verify(t).await,
                    Err(e) => Err(e),
                },
            };
            match verified {
                Ok(id) => {
                    req.extensions_mut().insert(id);
                    inner.call(req).await
                }
                Err(e) => {
                    tracing::debug!(path = %req.uri().path(), error = %e, "request refused");
                    Ok(tonic::Status::from(e).into_http())
                }
            }
        })
    }
}

/// The token of an `authorization: Bearer <token>` value.
pub fn parse_bearer(v: &str) -> Result<Token> {
    let t = v
        .strip_prefix("Bearer ")
        .ok_or_else(|| Error::unauthenticated("authorization must be `Bearer <token>`"))?;
    Token::parse(t)
}

/// The caller of a request that passed the [`AuthLayer`]. Fails closed: a service
/// mounted without the layer refuses every call.
pub fn identity<T>(r: &tonic::Request<T>) -> Result<Identity> {
    r.extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| Error::unauthenticated("the request carries no verified identity"))
}
