//! The seam to a sidecar's Envoy admin interface (127.0.0.1:<admin port> inside the pod netns):
//! [`ProxyAdmin`] with the real [`NetnsAdmin`] (a GET from a thread that entered the netns) and a
//! fake in [`crate::fake::FakeAdmin`].
//!
//! The agent asks it whether a sidecar has its listeners before it redirects the pod to it
//! ([`crate::listeners`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::netns::{self, NetnsError, Response};

/// `GET` on a sidecar's Envoy admin interface.
pub trait ProxyAdmin: Send + Sync {
    /// `GET <path>` on `127.0.0.1:<port>` inside the network namespace `netns`.
    fn get<'a>(
        &'a self,
        netns: &'a Path,
        port: u16,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Response, NetnsError>>;
}

/// The real [`ProxyAdmin`]: one blocking GET per call on a fresh thread inside the pod netns.
#[derive(Debug, Clone)]
pub struct NetnsAdmin {
    /// Bounds the connection and the whole exchange.
    pub timeout: Duration,
}

impl Default for NetnsAdmin {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(500),
        }
    }
}

impl ProxyAdmin for NetnsAdmin {
    fn get<'a>(
        &'a self,
        netns: &'a Path,
        port: u16,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Response, NetnsError>> {
        let netns: PathBuf = netns.to_path_buf();
        let path = path.to_string();
        let timeout = self.timeout;
        Box::pin(async move {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            tokio::task::spawn_blocking(move || netns::http_get(&netns, addr, &path, timeout))
                .await
                .map_err(|_| NetnsError::Thread)?
        })
    }
}
