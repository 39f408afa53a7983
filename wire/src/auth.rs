//! How tokens travel and are checked: the `authorization: Bearer <token>` gRPC
//! metadata (`channel` adds it on the client side, `layer` verifies it on every
//! server), the verifiers (`verify`: the cluster token checked locally, owner tokens
//! asked of the master with [`ask_master`] and cached briefly), and private token files
//! (`token_file`).
//!
//! The vocabulary (what a token and an identity are) is `shoal_common::auth`.

mod ask;
mod channel;
mod layer;
mod token_file;
mod verify;

use std::future::Future;
use std::pin::Pin;

pub use ask::ask_master;
pub use channel::{AuthChannel, TokenInterceptor, set_token, with_token};
pub use layer::{AuthLayer, AuthService, identity, parse_bearer};
pub use shoal_common::auth::{
    ClusterSecret, Identity, JobGrant, Token, constant_time_eq, hash_secret,
};
pub use token_file::{load_or_create_token_file, read_token_file, write_token_file};
pub use verify::{AskIssuer, ClusterOnly, RemoteVerifier, VERDICT_TTL, Verifier};

use shoal_common::{Error, Result};

/// A boxed future, for the object-safe async traits of this module.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// gRPC metadata key carrying `Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";

/// The token in gRPC metadata, if any.
pub fn token_from_metadata(md: &tonic::metadata::MetadataMap) -> Result<Option<Token>> {
    let Some(v) = md.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| Error::unauthenticated("the authorization header is not text"))?;
    parse_bearer(v).map(Some)
}
