//! The authorization decision, pure: may this token identity be this node, from this address, and
//! may it receive secrets?
//!
//! - `<pod>.<namespace>` (a sidecar) and `proxyless~<pod>.<namespace>` (a proxyless gRPC client):
//!   only with a token bound to that pod (its pod-name claim) in that namespace.
//! - `traffic-ingress` (the gateway): only with a token of one of the gateway service accounts.
//! - Every token must be bound to a pod, and (defence in depth, on by default) the connection must
//!   come from that pod's IP, and the pod must be the one the token was issued for (same UID).
//! - Secrets (TLS private keys) go to the gateway only.

use std::fmt;
use std::net::IpAddr;

use traffic_xds::Refusal;

use crate::review::Identity;

/// The gateway's node id.
pub const GATEWAY_NODE: &str = "traffic-ingress";
/// The prefix of proxyless gRPC clients' node ids.
pub const PROXYLESS_PREFIX: &str = "proxyless~";

/// A service account, `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountRef {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for ServiceAccountRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(ServiceAccountRef {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(format!("{s:?} is not <namespace>/<service account>")),
        }
    }
}

impl fmt::Display for ServiceAccountRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The rules.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Who may be `traffic-ingress` (and receive secrets).
    pub gateway_service_accounts: Vec<ServiceAccountRef>,
    /// Whether the peer address must be the token's pod's IP.
    pub check_peer: bool,
}

/// What an admitted stream may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub secrets: bool,
}

/// What a node id claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeClaim<'a> {
    Gateway,
    /// A sidecar or a proxyless client of this pod.
    Pod {
        name: &'a str,
        namespace: &'a str,
    },
    Unknown,
}

/// Reads a node id. A namespace has no dots, so `<pod>.<namespace>` splits at the last one (pod
/// names may have dots).
pub fn parse_node(node_id: &str) -> NodeClaim<'_> {
    if node_id == GATEWAY_NODE {
        return NodeClaim::Gateway;
    }
    let pod = node_id.strip_prefix(PROXYLESS_PREFIX).unwrap_or(node_id);
    match pod.rsplit_once('.') {
        Some((name, namespace)) if !name.is_empty() && !namespace.is_empty() => {
            NodeClaim::Pod { name, namespace }
        }
        _ => NodeClaim::Unknown,
    }
}

/// The pod a token is bound to, as the control plane knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    pub uid: String,
    pub ip: Option<IpAddr>,
}

/// Decides. `pod` is what the control plane knows of the identity's pod (`None`: not known).
pub fn authorize(
    policy: &Policy,
    identity: &Identity,
    node_id: &str,
    peer: Option<IpAddr>,
    pod: Option<&PodFacts>,
) -> Result<Grant, Refusal> {
    let Some(pod_name) = identity.pod_name.as_deref() else {
        return Err(Refusal::denied(
            "unbound_token",
            format!("the token of {} is not bound to a pod", identity.username),
        ));
    };
    let gateway = match parse_node(node_id) {
        NodeClaim::Gateway => {
            let allowed = policy
                .gateway_service_accounts
                .iter()
                .any(|sa| sa.namespace == identity.namespace && sa.name == identity.service_account);
            if !allowed {
                return Err(Refusal::denied(
                    "not_gateway",
                    format!("{} may not be {GATEWAY_NODE}", identity.username),
                ));
            }
            true
        }
        NodeClaim::Pod { name, namespace } => {
            if name != pod_name || namespace != identity.namespace {
                return Err(Refusal::denied(
                    "node_mismatch",
                    format!(
                        "a token of pod {}/{pod_name} may not be node {node_id:?}",
                        identity.namespace
                    ),
                ));
            }
            false
        }
        NodeClaim::Unknown => {
            return Err(Refusal::denied(
                "unknown_node",
                format!("{node_id:?} is not <pod>.<namespace> nor {GATEWAY_NODE}"),
            ))
        }
    };
    if policy.check_peer {
        let Some(pod) = pod else {
            return Err(Refusal::denied(
                "pod_unknown",
                format!("pod {}/{pod_name} is not known (yet)", identity.namespace),
            ));
        };
        if let Some(uid) = identity.pod_uid.as_deref() {
            if !pod.uid.is_empty() && pod.uid != uid {
                return Err(Refusal::denied(
                    "pod_mismatch",
                    format!("the token is of an earlier pod {}/{pod_name}", identity.namespace),
                ));
            }
        }
        let peer = peer.map(|ip| ip.to_canonical());
        if pod.ip.is_none() || pod.ip.map(|ip| ip.to_canonical()) != peer {
            return Err(Refusal::denied(
                "peer_mismatch",
                format!(
                    "connection from {peer:?}, but pod {}/{pod_name} has IP {:?}",
                    identity.namespace, pod.ip
                ),
            ));
        }
    }
    Ok(Grant { secrets: gateway })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(ns: &str, sa: &str, pod: Option<&str>) -> Identity {
        Identity {
            username: format!("system:serviceaccount:{ns}:{sa}"),
            namespace: ns.into(),
            service_account: sa.into(),
            pod_name: pod.map(str::to_string),
            pod_uid: pod.map(|p| format!("uid-{p}")),
            expires_at: None,
        }
    }

    fn policy() -> Policy {
        Policy {
            gateway_service_accounts: vec!["traffic-system/traffic-ingress".parse().expect("sa")],
            check_peer: true,
        }
    }

    fn facts(pod: &str, ip: &str) -> PodFacts {
        PodFacts {
            uid: format!("uid-{pod}"),
            ip: Some(ip.parse().expect("ip")),
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    #[test]
    fn node_ids_split_at_the_last_dot() {
        assert_eq!(
            parse_node("web-1.default"),
            NodeClaim::Pod {
                name: "web-1",
                namespace: "default"
            }
        );
        assert_eq!(
            parse_node("proxyless~a.b.prod"),
            NodeClaim::Pod {
                name: "a.b",
                namespace: "prod"
            }
        );
        assert_eq!(parse_node("traffic-ingress"), NodeClaim::Gateway);
        assert_eq!(parse_node("nodot"), NodeClaim::Unknown);
        assert_eq!(parse_node(".default"), NodeClaim::Unknown);
    }

    #[test]
    fn a_pod_token_is_its_own_node_only_from_its_own_ip_and_gets_no_secrets() {
        let a = identity("default", "web", Some("a"));
        let pod = facts("a", "10.0.0.5");
        let p = policy();
        assert_eq!(
            authorize(&p, &a, "a.default", ip("10.0.0.5"), Some(&pod)),
            Ok(Grant { secrets: false })
        );
        assert_eq!(
            authorize(&p, &a, "proxyless~a.default", ip("::ffff:10.0.0.5"), Some(&pod)),
            Ok(Grant { secrets: false })
        );
        let reason = |r: Result<Grant, Refusal>| r.map_err(|r| r.reason);
        assert_eq!(
            reason(authorize(&p, &a, "b.default", ip("10.0.0.5"), Some(&pod))),
            Err("node_mismatch")
        );
        assert_eq!(
            reason(authorize(&p, &a, "a.other", ip("10.0.0.5"), Some(&pod))),
            Err("node_mismatch")
        );
        assert_eq!(
            reason(authorize(&p, &a, "traffic-ingress", ip("10.0.0.5"), Some(&pod))),
            Err("not_gateway")
        );
        assert_eq!(
            reason(authorize(&p, &a, "a.default", ip("10.0.0.6"), Some(&pod))),
            Err("peer_mismatch")
        );
        assert_eq!(
            reason(authorize(&p, &a, "a.default", None, Some(&pod))),
            Err("peer_mismatch")
        );
        assert_eq!(
            reason(authorize(&p, &a, "a.default", ip("10.0.0.5"), None)),
            Err("pod_unknown")
        );
        let recreated = PodFacts {
            uid: "uid-new".into(),
            ..pod.clone()
        };
        assert_eq!(
            reason(authorize(&p, &a, "a.default", ip("10.0.0.5"), Some(&recreated))),
            Err("pod_mismatch")
        );
        assert_eq!(
            reason(authorize(&p, &a, "bench-1", ip("10.0.0.5"), Some(&pod))),
            Err("unknown_node")
        );
    }

    #[test]
    fn only_the_gateway_service_account_is_the_gateway_and_gets_secrets() {
        let gw = identity("traffic-system", "traffic-ingress", Some("gw-1"));
        let pod = facts("gw-1", "10.0.0.9");
        let p = policy();
        assert_eq!(
            authorize(&p, &gw, "traffic-ingress", ip("10.0.0.9"), Some(&pod)),
            Ok(Grant { secrets: true })
        );
        // The peer check holds for the gateway as for sidecars: its token, used from anywhere but
        // its pod's IP, or naming an earlier gateway pod, gets nothing (no secrets).
        assert_eq!(
            authorize(&p, &gw, "traffic-ingress", ip("10.0.0.10"), Some(&pod)).map_err(|r| r.reason),
            Err("peer_mismatch")
        );
        assert_eq!(
            authorize(&p, &gw, "traffic-ingress", None, Some(&pod)).map_err(|r| r.reason),
            Err("peer_mismatch")
        );
        assert_eq!(
            authorize(&p, &gw, "traffic-ingress", ip("10.0.0.9"), None).map_err(|r| r.reason),
            Err("pod_unknown")
        );
        let replaced = PodFacts {
            uid: "uid-gw-2".into(),
            ..pod.clone()
        };
        assert_eq!(
            authorize(&p, &gw, "traffic-ingress", ip("10.0.0.9"), Some(&replaced)).map_err(|r| r.reason),
            Err("pod_mismatch")
        );
        // The gateway's token is bound to its pod too: it is not a sidecar of another pod.
        assert_eq!(
            authorize(&p, &gw, "web.default", ip("10.0.0.9"), Some(&pod)).map_err(|r| r.reason),
            Err("node_mismatch")
        );
        let same_name_other_ns = identity("default", "traffic-ingress", Some("gw-1"));
        assert_eq!(
            authorize(
                &p,
                &same_name_other_ns,
                "traffic-ingress",
                ip("10.0.0.9"),
                Some(&pod)
            )
            .map_err(|r| r.reason),
            Err("not_gateway")
        );
    }

    #[test]
    fn a_token_not_bound_to_a_pod_is_refused_and_the_peer_check_can_be_off() {
        let p = policy();
        let unbound = identity("default", "web", None);
        assert_eq!(
            authorize(&p, &unbound, "a.default", ip("10.0.0.5"), None).map_err(|r| r.reason),
            Err("unbound_token")
        );
        let relaxed = Policy {
            check_peer: false,
            ..policy()
        };
        let a = identity("default", "web", Some("a"));
        assert_eq!(
            authorize(&relaxed, &a, "a.default", None, None),
            Ok(Grant { secrets: false })
        );
    }

    #[test]
    fn service_account_refs_parse() {
        let sa: ServiceAccountRef = "ns/name".parse().expect("parse");
        assert_eq!(sa.to_string(), "ns/name");
        assert!("nons".parse::<ServiceAccountRef>().is_err());
        assert!("/x".parse::<ServiceAccountRef>().is_err());
        assert!("a/b/c".parse::<ServiceAccountRef>().is_err());
    }
}
