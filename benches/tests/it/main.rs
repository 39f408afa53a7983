//! The integration tests of shoal-benches: every benchmark also runs tiny, so it
//! cannot rot.

mod durability_smoke;
mod pinning_smoke;
mod scheduling_smoke;
mod suite_smoke;
