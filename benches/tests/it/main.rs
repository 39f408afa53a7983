//! The integration tests of shoal-benches: every benchmark also runs tiny, so it
//! cannot rot.

mod suite_smoke;
