//! [`MasterState`]: everything the master holds, shared by its RPC handlers. Each part
//! is its own owner (the catalogue, the worker set, the load jobs, tokens and grants);
//! the handlers decide who may call what, then delegate to one of them.

use std::sync::Arc;
use std::time::Duration;

use crate::access::Access;
use crate::catalog::Catalog;
use crate::load::LoadJobs;
use crate::membership::Membership;

pub struct MasterState {
    pub catalog: Arc<Catalog>,
    pub members: Arc<Membership>,
    /// Prewarm jobs; they hold their own handles on the catalogue and the worker set.
    pub loads: LoadJobs,
    /// Tokens and grants: who may do what.
    pub access: Arc<Access>,
    /// How often workers are told to heartbeat.
    pub heartbeat_interval: Duration,
}
