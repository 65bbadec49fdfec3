//! The mesh model and its pure translation into Envoy v3 resources (no I/O).
pub mod model;
pub mod snapshot;
