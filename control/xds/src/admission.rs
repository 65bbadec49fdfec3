//! Who may open an ADS stream, and as which node: the hook the server calls before it serves a
//! stream anything.
//!
//! The server knows nothing about tokens or Kubernetes. It hands an [`Admit`] implementation the
//! stream's credentials (the `authorization` metadata, the peer address and the node id of the
//! first request) and serves the stream only if it answers with an [`Admission`]. A refusal ends
//! the stream with its gRPC status (`UNAUTHENTICATED` or `PERMISSION_DENIED`), a log line and the
//! `xds_auth_refusals_total{reason}` metric; nothing else is sent. Without an `Admit` every
//! stream is admitted with secrets (the behaviour before authentication existed).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

/// What a stream presents.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// The `authorization` request header (gRPC metadata), as sent.
    pub authorization: Option<&'a str>,
    /// The TCP peer.
    pub peer: Option<SocketAddr>,
    /// The node id of the stream's first request.
    pub node_id: &'a str,
}

/// An admitted stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// Whether the stream may receive secrets (TLS private keys): gateway identities only.
    pub secrets: bool,
    /// Who it is, for the log (e.g. `system:serviceaccount:default:reviews`).
    pub identity: String,
    /// When its credentials expire: the server then ends the stream with `UNAUTHENTICATED` (the
    /// client reconnects with its renewed token and is admitted again). `None`: never.
    pub expires_at: Option<SystemTime>,
}

impl Admission {
    /// Every stream when authentication is off.
    pub fn anyone() -> Self {
        Admission {
            secrets: true,
            identity: "unauthenticated".into(),
            expires_at: None,
        }
    }
}

/// The least time an admitted stream is served before its credentials' expiry ends it: a token
/// the reviewer accepted but that this clock already sees expired (skew) costs a reconnect after
/// this long, not a reconnect loop.
pub const MIN_STREAM_LIFETIME: Duration = Duration::from_secs(1);

impl Admission {
    /// How long from `now` until the stream must end (`None`: never).
    pub fn remaining(&self, now: SystemTime) -> Option<Duration> {
        let at = self.expires_at?;
        Some(
            at.duration_since(now)
                .unwrap_or(Duration::ZERO)
                .max(MIN_STREAM_LIFETIME),
        )
    }
}

/// Why a stream was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `UNAUTHENTICATED` (no or invalid credentials) or `PERMISSION_DENIED` (valid credentials,
    /// wrong node or peer).
    pub code: RefusalCode,
    /// Metric label: a short, fixed word (`no_token`, `invalid_token`, `node_mismatch`, ...).
    pub reason: &'static str,
    /// For the log and the gRPC status message.
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCode {
    Unauthenticated,
    PermissionDenied,
    /// The credentials could not be checked (the reviewer is unreachable).
    Unavailable,
}

impl Refusal {
    pub fn unauthenticated(reason: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code: RefusalCode::Unauthenticated,
            reason,
            message: message.into(),
        }
    }

    pub fn denied(reason: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code: RefusalCode::PermissionDenied,
            reason,
            message: message.into(),
        }
    }

    pub fn unavailable(reason: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code: RefusalCode::Unavailable,
            reason,
            message: message.into(),
        }
    }

    pub fn status(&self) -> tonic::Status {
        match self.code {
            RefusalCode::Unauthenticated => tonic::Status::unauthenticated(self.message.clone()),
            RefusalCode::PermissionDenied => tonic::Status::permission_denied(self.message.clone()),
            RefusalCode::Unavailable => tonic::Status::unavailable(self.message.clone()),
        }
    }
}

pub type AdmitFuture<'a> = Pin<Box<dyn Future<Output = Result<Admission, Refusal>> + Send + 'a>>;

/// Decides whether a stream is served. Implemented outside this crate (token review, node
/// binding); see `traffic-xds-auth`.
pub trait Admit: Send + Sync + 'static {
    fn admit<'a>(&'a self, credentials: Credentials<'a>) -> AdmitFuture<'a>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_lives_until_its_credentials_expire_and_at_least_a_moment() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut a = Admission::anyone();
        assert_eq!(a.remaining(now), None);
        a.expires_at = Some(now + Duration::from_secs(600));
        assert_eq!(a.remaining(now), Some(Duration::from_secs(600)));
        a.expires_at = Some(now - Duration::from_secs(5));
        assert_eq!(a.remaining(now), Some(MIN_STREAM_LIFETIME));
    }
}
