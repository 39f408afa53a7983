//! The client side: one interceptor that attaches a token to every call made over a
//! channel, so connection code only wraps its `Channel` once ([`with_token`]).

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::{AUTHORIZATION, Token};

/// Adds `authorization: Bearer <token>` to requests that do not carry one already (a
/// server acting for a caller may forward the caller's own token instead).
#[derive(Clone, Default)]
pub struct TokenInterceptor {
    bearer: Option<AsciiMetadataValue>,
}

impl TokenInterceptor {
    pub fn new(token: Option<&Token>) -> TokenInterceptor {
        TokenInterceptor {
            // A token is ASCII hex by construction, so this never fails in practice.
            bearer: token.and_then(|t| MetadataValue::try_from(t.bearer()).ok()),
        }
    }
}

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(b) = &self.bearer
            && !r.metadata().contains_key(AUTHORIZATION)
        {
            r.metadata_mut().insert(AUTHORIZATION, b.clone());
        }
        Ok(r)
    }
}

/// A channel whose calls carry a token.
pub type AuthChannel = InterceptedService<Channel, TokenInterceptor>;

/// Wraps `channel` so that every call carries `token` (none: calls go out without
/// one, and servers answer `Unauthenticated`).
pub fn with_token(channel: Channel, token: Option<&Token>) -> AuthChannel {
    InterceptedService::new(channel, TokenInterceptor::new(token))
}

/// Puts `token` on one request, replacing what the channel would add.
pub fn set_token<T>(r: &mut tonic::Request<T>, token: &Token) {
    if let Ok(v) = MetadataValue::try_from(token.bearer()) {
        r.metadata_mut().insert(AUTHORIZATION, v);
    }
}
