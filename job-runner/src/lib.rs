//! placeholder while building
pub mod spec;
