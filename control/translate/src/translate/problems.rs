//! What could not be translated: invalid labels and [`Problem`]s, each with the object to report
//! it on (the rest of the model is still translated).

use std::fmt;

use traffic_labels::LabelError;

use crate::snapshot::ObjectRef;

/// An invalid label, with the object it sits on (for a log line and a Kubernetes Event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectLabelError {
    pub object: ObjectRef,
    pub error: LabelError,
}

impl fmt::Display for ObjectLabelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.error)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

impl ObjectRef {
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        ObjectRef {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The Service a cluster, route configuration, endpoint assignment or outbound filter chain
    /// named `<port>|<namespace>|<service>` belongs to.
    pub fn from_cluster_name(name: &str) -> Option<ObjectRef> {
        let mut parts = name.split('|');
        let (port, ns, svc) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || port.parse::<u16>().is_err() {
            return None;
        }
        Some(ObjectRef::new("Service", ns, svc))
    }
}

/// Something in the model that could not be translated (the rest still is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("{ingress}: backend Service {service} not found")]
    MissingService { ingress: ObjectRef, service: String },
    #[error("{ingress}: Service {service} has no TCP port {port}")]
    MissingPort {
        ingress: ObjectRef,
        service: String,
        port: String,
    },
    #[error("{ingress}: TLS Secret {secret} not found; its hosts are not served over HTTPS")]
    MissingSecret { ingress: ObjectRef, secret: String },
    #[error("{ingress}: TLS host {host:?} is already served by another Ingress; ignored here")]
    DuplicateTlsHost { ingress: ObjectRef, host: String },
    #[error("{ingress}: TLS Secret {secret} is not usable, its hosts are not served over HTTPS: {error}")]
    InvalidTlsSecret {
        ingress: ObjectRef,
        secret: String,
        error: crate::tls::TlsError,
    },
    #[error("{ingress}: the certificate of TLS Secret {secret} expires on {not_after}")]
    TlsSecretExpiringSoon {
        ingress: ObjectRef,
        secret: String,
        not_after: String,
    },
    #[error("{ingress}: host {host:?} ignored: {error}")]
    InvalidHost {
        ingress: ObjectRef,
        host: String,
        error: crate::ingress_check::IngressValueError,
    },
    #[error("{ingress}: path {path:?} ignored: {error}")]
    InvalidPath {
        ingress: ObjectRef,
        path: String,
        error: crate::ingress_check::IngressValueError,
    },
    /// A validation finding on an Istio object (`traffic-control analyze` reports the same): an
    /// error leaves out the part at `path`, a warning changes nothing.
    #[error("{object}: {path}: {code} {} {message}", code.severity())]
    IstioValidation {
        object: ObjectRef,
        path: String,
        code: traffic_istio::Code,
        message: String,
    },
    /// An Istio rule or setting that is left out (the rest of the object still applies).
    #[error("{object}: {path}: {message}")]
    IstioRule {
        object: ObjectRef,
        path: String,
        message: String,
    },
    /// A rule naming a Service, port or subset that is not there: it is not emitted (the
    /// host's previous behaviour stays), so Envoy never sees a route to a missing cluster.
    #[error("{object}: rule {rule}: {message}; the rule is not emitted")]
    UnresolvedReference {
        object: ObjectRef,
        rule: String,
        message: String,
    },
    /// Several Istio objects for one host: `object` lost to `winner` as the message says.
    #[error("{object}: {message} (by {winner})")]
    IstioConflict {
        object: ObjectRef,
        winner: ObjectRef,
        message: String,
    },
    /// A Service's label setting replaced by an Istio rule for the same host and port.
    #[error("{service}: label {setting} is overridden by {by} on port {port}")]
    LabelOverridden {
        service: ObjectRef,
        setting: String,
        port: u16,
        by: ObjectRef,
    },
}

impl Problem {
    /// The object to report the problem on.
    pub fn object(&self) -> &ObjectRef {
        match self {
            Problem::MissingService { ingress, .. }
            | Problem::MissingPort { ingress, .. }
            | Problem::MissingSecret { ingress, .. }
            | Problem::DuplicateTlsHost { ingress, .. }
            | Problem::InvalidTlsSecret { ingress, .. }
            | Problem::TlsSecretExpiringSoon { ingress, .. }
            | Problem::InvalidHost { ingress, .. }
            | Problem::InvalidPath { ingress, .. } => ingress,
            Problem::IstioRule { object, .. }
            | Problem::IstioValidation { object, .. }
            | Problem::UnresolvedReference { object, .. }
            | Problem::IstioConflict { object, .. } => object,
            Problem::LabelOverridden { service, .. } => service,
        }
    }

    /// The TLS Secret (in the Ingress's namespace) the problem is about, if any: it is reported
    /// there too, where whoever renews the certificate looks.
    pub fn secret(&self) -> Option<ObjectRef> {
        match self {
            Problem::InvalidTlsSecret { ingress, secret, .. }
            | Problem::TlsSecretExpiringSoon { ingress, secret, .. } => {
                Some(ObjectRef::new("Secret", &ingress.namespace, secret))
            }
            _ => None,
        }
    }
}
