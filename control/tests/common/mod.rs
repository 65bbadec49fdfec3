//! Shared fixtures for the control-plane integration tests: an in-process ADS server on
//! 127.0.0.1:0, ADS clients that check protocol invariants on every response, resource builders,
//! and (in `envoy`) real Envoy processes.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the fixtures"
)]

pub mod ads;
pub mod envoy;
pub mod mesh;
pub mod proxyless;
pub mod resources;
