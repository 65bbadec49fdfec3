//! Invalid `traffic.*` labels found in a model, and objects translation could not (fully) use,
//! tied to the objects users fix (pure).
//!
//! Each one becomes a Warning Event on that object (see [`crate::events`]); the setting itself is
//! ignored by translation, the rest of the object's configuration still applies.

use traffic_labels::{LabelError, ObjectKind};
use traffic_translate::model::MeshModel;
use traffic_translate::snapshot::ObjectRef;
use traffic_translate::translate::Problem;

use crate::events::EventType;

/// The Event reason for an invalid label value.
pub const INVALID_LABEL_REASON: &str = "InvalidTrafficLabel";

/// One invalid label on one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelProblem {
    pub object: ObjectRef,
    pub error: LabelError,
}

impl LabelProblem {
    /// The Event message: says which label, which value, why, and that it is ignored.
    pub fn message(&self) -> String {
        self.error.to_string()
    }
}

fn object(kind: &str, namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        kind: kind.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

/// Every invalid label of the Services, Pods and workloads of `model`, in model order.
pub fn label_problems(model: &MeshModel) -> Vec<LabelProblem> {
    let mut out = Vec::new();
    let mut push = |object: ObjectRef, errors: Vec<LabelError>| {
        out.extend(errors.into_iter().map(|error| LabelProblem {
            object: object.clone(),
            error,
        }));
    };
    for s in &model.services {
        push(
            object("Service", &s.namespace, &s.name),
            traffic_labels::parse(ObjectKind::Service, &s.labels).errors,
        );
    }
    for w in &model.workloads {
        push(
            object(w.kind.as_str(), &w.namespace, &w.name),
            traffic_labels::parse(ObjectKind::Workload, &w.labels).errors,
        );
    }
    for p in &model.pods {
        push(
            object("Pod", &p.namespace, &p.name),
            traffic_labels::parse(ObjectKind::Pod, &p.labels).errors,
        );
    }
    out
}

/// Event reasons for [`Problem`]s of translation.
pub mod reasons {
    pub const BACKEND_NOT_FOUND: &str = "IngressBackendNotFound";
    pub const TLS_SECRET_NOT_FOUND: &str = "TLSSecretNotFound";
    pub const DUPLICATE_TLS_HOST: &str = "DuplicateTLSHost";
    /// Garbage PEM, a key of another certificate, an expired certificate.
    pub const INVALID_TLS_SECRET: &str = "InvalidTLSSecret";
    pub const TLS_CERTIFICATE_EXPIRING: &str = "TLSCertificateExpiringSoon";
    /// A host or path Envoy would reject or never match.
    pub const INVALID_INGRESS_RULE: &str = "InvalidIngressRule";
    /// An Istio rule or setting left out (invalid, or naming what is not there).
    pub const ISTIO_RULE_REJECTED: &str = "IstioRuleRejected";
    /// A destination (Service, port, subset) that does not exist: the rule is not emitted.
    pub const BACKEND_NOT_FOUND_ISTIO: &str = "BackendNotFound";
    /// An input that lost to another (several VirtualServices/DestinationRules, or labels).
    pub const OVERRIDDEN: &str = "Overridden";
}

/// One Event to write for a translation problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProblemEvent {
    pub object: ObjectRef,
    pub type_: EventType,
    pub reason: &'static str,
    pub message: String,
}

/// The Events for one translation problem: on the Ingress it comes from, and for a TLS Secret
/// problem on the Secret too (whoever renews the certificate looks there).
pub fn problem_events(problem: &Problem) -> Vec<ProblemEvent> {
    use reasons::*;
    let reason = match problem {
        Problem::MissingService { .. } | Problem::MissingPort { .. } => BACKEND_NOT_FOUND,
        Problem::MissingSecret { .. } => TLS_SECRET_NOT_FOUND,
        Problem::DuplicateTlsHost { .. } => DUPLICATE_TLS_HOST,
        Problem::InvalidTlsSecret { .. } => INVALID_TLS_SECRET,
        Problem::TlsSecretExpiringSoon { .. } => TLS_CERTIFICATE_EXPIRING,
        Problem::InvalidHost { .. } | Problem::InvalidPath { .. } => INVALID_INGRESS_RULE,
        Problem::IstioRule { .. } => ISTIO_RULE_REJECTED,
        Problem::IstioValidation { code, .. } => code.reason(),
        Problem::UnresolvedReference { .. } => BACKEND_NOT_FOUND_ISTIO,
        Problem::IstioConflict { .. } | Problem::LabelOverridden { .. } => OVERRIDDEN,
    };
    let message = problem.to_string();
    std::iter::once(problem.object().clone())
        .chain(problem.secret())
        .map(|object| ProblemEvent {
            object,
            type_: EventType::Warning,
            reason,
            message: message.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use traffic_translate::ingress_check::IngressValueError;
    use traffic_translate::tls::TlsError;

    fn ing(name: &str) -> ObjectRef {
        ObjectRef::new("Ingress", "shop", name)
    }

    #[test]
    fn a_tls_secret_problem_is_a_warning_on_the_ingress_and_on_the_secret() {
        for (problem, reason) in [
            (
                Problem::InvalidTlsSecret {
                    ingress: ing("garbage"),
                    secret: "garbage-tls".into(),
                    error: TlsError::NoCertificate,
                },
                reasons::INVALID_TLS_SECRET,
            ),
            (
                Problem::InvalidTlsSecret {
                    ingress: ing("garbage"),
                    secret: "garbage-tls".into(),
                    error: TlsError::KeyMismatch,
                },
                reasons::INVALID_TLS_SECRET,
            ),
            (
                Problem::TlsSecretExpiringSoon {
                    ingress: ing("garbage"),
                    secret: "garbage-tls".into(),
                    not_after: "Jan  1 00:00:00 2027 +00:00".into(),
                },
                reasons::TLS_CERTIFICATE_EXPIRING,
            ),
        ] {
            let events = problem_events(&problem);
            let objects: Vec<_> = events.iter().map(|e| e.object.clone()).collect();
            assert_eq!(
                objects,
                vec![ing("garbage"), ObjectRef::new("Secret", "shop", "garbage-tls")]
            );
            for e in &events {
                assert_eq!(e.type_, EventType::Warning);
                assert_eq!(e.reason, reason);
                assert_eq!(e.message, problem.to_string());
            }
        }
        let expired = Problem::InvalidTlsSecret {
            ingress: ing("old"),
            secret: "old-tls".into(),
            error: TlsError::Expired {
                not_after: "Jan  1 00:00:00 2020 +00:00".into(),
            },
        };
        let message = &problem_events(&expired)[0].message;
        assert!(
            message.contains("not served over HTTPS") && message.contains("expired"),
            "{message}"
        );
    }

    #[test]
    fn other_ingress_problems_are_a_warning_on_the_ingress_only() {
        for (problem, reason) in [
            (
                Problem::MissingSecret {
                    ingress: ing("a"),
                    secret: "s".into(),
                },
                reasons::TLS_SECRET_NOT_FOUND,
            ),
            (
                Problem::MissingService {
                    ingress: ing("a"),
                    service: "s".into(),
                },
                reasons::BACKEND_NOT_FOUND,
            ),
            (
                Problem::InvalidPath {
                    ingress: ing("a"),
                    path: "/a?b".into(),
                    error: IngressValueError::BadPathCharacter,
                },
                reasons::INVALID_INGRESS_RULE,
            ),
            (
                Problem::InvalidHost {
                    ingress: ing("a"),
                    host: "a_b".into(),
                    error: IngressValueError::BadHost,
                },
                reasons::INVALID_INGRESS_RULE,
            ),
            (
                Problem::DuplicateTlsHost {
                    ingress: ing("a"),
                    host: "h".into(),
                },
                reasons::DUPLICATE_TLS_HOST,
            ),
        ] {
            let events = problem_events(&problem);
            assert_eq!(events.len(), 1, "{problem}");
            assert_eq!(events[0].object, ing("a"));
            assert_eq!(events[0].reason, reason);
            assert_eq!(events[0].type_, EventType::Warning);
        }
    }
}
