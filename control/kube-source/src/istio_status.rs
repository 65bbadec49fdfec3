//! Feedback on `networking.istio.io` objects (pure): translation problems -> `status.conditions`,
//! as Gateway API writes them, and the status patch when they changed.
//!
//! Two conditions on every VirtualService, DestinationRule, ServiceEntry and Gateway, each with
//! `observedGeneration` = the object's `metadata.generation`:
//!
//! | condition | `True` | `False` (reason) |
//! |---|---|---|
//! | `Accepted` | `Accepted`: every part of the object is applied | a part is left out: the validation code's reason (`InvalidRegex`, `UnsupportedValue`, ...), `UnsupportedValue` for what translation cannot express, `Overridden` when an earlier object wins, `NoMatchingGateway` for a Gateway selecting no gateway proxy |
//! | `ResolvedRefs` | `ResolvedRefs`: every reference resolves | `BackendNotFound` (a destination Service, port or subset, a Gateway named in `gateways`), `InvalidCertificateRef` (a Gateway's `credentialName` Secret missing or unusable) |
//!
//! The message is the first problem, with how many more there are; every problem is also a
//! Warning Event on the object. Warnings (deprecated fields, a certificate expiring soon) do not
//! change a condition.

use serde_json::{json, Value};
use traffic_istio::Kind;
use traffic_translate::model::MeshModel;
use traffic_translate::snapshot::ObjectRef;
use traffic_translate::translate::Problem;

pub const ACCEPTED: &str = "Accepted";
pub const RESOLVED_REFS: &str = "ResolvedRefs";

/// One status condition (without `lastTransitionTime`, which [`status_patch`] manages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
    pub observed_generation: Option<i64>,
}

/// The conditions one object should carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStatus {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub conditions: Vec<Condition>,
}

/// Which condition a problem turns false, and with which reason; `None` for warnings.
fn classify(p: &Problem) -> Option<(&'static str, &'static str)> {
    Some(match p {
        Problem::IstioValidation { code, .. } => {
            if code.severity() != traffic_istio::Severity::Error {
                return None;
            }
            (ACCEPTED, code.reason())
        }
        Problem::IstioRule { path, .. } if path == "spec.selector" => (ACCEPTED, "NoMatchingGateway"),
        Problem::IstioRule { .. } => (ACCEPTED, "UnsupportedValue"),
        Problem::IstioConflict { .. } => (ACCEPTED, "Overridden"),
        Problem::UnresolvedReference { .. } => (RESOLVED_REFS, "BackendNotFound"),
        Problem::MissingSecret { .. } | Problem::InvalidTlsSecret { .. } => {
            (RESOLVED_REFS, "InvalidCertificateRef")
        }
        _ => return None,
    })
}

/// The two conditions of an object of `generation` with these problems (the problems reported
/// on it, in order).
pub fn conditions(generation: Option<i64>, problems: &[&Problem]) -> Vec<Condition> {
    [ACCEPTED, RESOLVED_REFS]
        .into_iter()
        .map(|type_| {
            let failing: Vec<(&Problem, &'static str)> = problems
                .iter()
                .filter_map(|p| classify(p).filter(|(t, _)| *t == type_).map(|(_, r)| (*p, r)))
                .collect();
            match failing.first() {
                None => Condition {
                    type_,
                    status: true,
                    reason: type_.to_string(),
                    message: if type_ == ACCEPTED {
                        "every part of the object is applied".into()
                    } else {
                        "every reference resolves".into()
                    },
                    observed_generation: generation,
                },
                Some((first, reason)) => {
                    let more = failing.len() - 1;
                    let mut message = first.to_string();
                    if more > 0 {
                        message.push_str(&format!(" (and {more} more; see the object's Events)"));
                    }
                    Condition {
                        type_,
                        status: false,
                        reason: reason.to_string(),
                        message,
                        observed_generation: generation,
                    }
                }
            }
        })
        .collect()
}

/// The conditions of every Istio object of `model` given the translation's `problems`.
pub fn desired_statuses(model: &MeshModel, problems: &[Problem]) -> Vec<ObjectStatus> {
    model
        .istio
        .objects()
        .map(|o| {
            let meta = o.metadata();
            let kind = o.kind();
            let me = ObjectRef::new(kind.as_str(), &meta.namespace, &meta.name);
            let mine: Vec<&Problem> = problems.iter().filter(|p| *p.object() == me).collect();
            ObjectStatus {
                kind,
                namespace: meta.namespace.clone(),
                name: meta.name.clone(),
                conditions: conditions(meta.generation, &mine),
            }
        })
        .collect()
}

/// The merge patch setting `status.conditions` to `desired`, or `None` when `current` (the
/// object's `status`) already says the same (types, statuses, reasons, messages and
/// generations; other conditions, such as Istio's own, are kept). A condition whose status did
/// not change keeps its `lastTransitionTime`; the others get `now` (RFC 3339).
pub fn status_patch(current: Option<&Value>, desired: &[Condition], now: &str) -> Option<Value> {
    let existing: Vec<Value> = current
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let find = |type_: &str| {
        existing
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
    };
    let status_str = |b: bool| if b { "True" } else { "False" };
    let mut changed = false;
    let mut out: Vec<Value> = existing
        .iter()
        .filter(|c| {
            let t = c.get("type").and_then(Value::as_str);
            !desired.iter().any(|d| Some(d.type_) == t)
        })
        .cloned()
        .collect();
    for d in desired {
        let old = find(d.type_);
        let same_status =
            old.and_then(|o| o.get("status")).and_then(Value::as_str) == Some(status_str(d.status));
        let same = same_status
            && old.and_then(|o| o.get("reason")).and_then(Value::as_str) == Some(d.reason.as_str())
            && old.and_then(|o| o.get("message")).and_then(Value::as_str) == Some(d.message.as_str())
            && old
                .and_then(|o| o.get("observedGeneration"))
                .and_then(Value::as_i64)
                == d.observed_generation;
        changed |= !same;
        let since = old
            .filter(|_| same_status)
            .and_then(|o| o.get("lastTransitionTime"))
            .and_then(Value::as_str)
            .unwrap_or(now);
        let mut c = json!({
            "type": d.type_,
            "status": status_str(d.status),
            "reason": d.reason,
            "message": d.message,
            "lastTransitionTime": since,
        });
        if let Some(g) = d.observed_generation {
            c["observedGeneration"] = json!(g);
        }
        out.push(c);
    }
    changed.then(|| json!({ "status": { "conditions": out } }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vs() -> ObjectRef {
        ObjectRef::new("VirtualService", "default", "reviews")
    }

    fn unresolved() -> Problem {
        Problem::UnresolvedReference {
            object: vs(),
            rule: "default/reviews/0".into(),
            message: "subset \"v9\" of reviews.default is defined by no DestinationRule".into(),
        }
    }

    #[test]
    fn no_problems_give_two_true_conditions_with_the_generation() {
        let c = conditions(Some(3), &[]);
        assert_eq!(c.len(), 2);
        for (c, t) in c.iter().zip([ACCEPTED, RESOLVED_REFS]) {
            assert_eq!((c.type_, c.status, c.reason.as_str()), (t, true, t));
            assert_eq!(c.observed_generation, Some(3));
        }
    }

    #[test]
    fn each_problem_kind_turns_its_condition_false_with_a_reason() {
        let gw = ObjectRef::new("Gateway", "default", "gw");
        let cases: Vec<(Problem, &str, &str)> = vec![
            (unresolved(), RESOLVED_REFS, "BackendNotFound"),
            (
                Problem::MissingSecret {
                    ingress: gw.clone(),
                    secret: "cert".into(),
                },
                RESOLVED_REFS,
                "InvalidCertificateRef",
            ),
            (
                Problem::IstioRule {
                    object: gw.clone(),
                    path: "spec.selector".into(),
                    message: "selects no gateway proxy".into(),
                },
                ACCEPTED,
                "NoMatchingGateway",
            ),
            (
                Problem::IstioRule {
                    object: gw.clone(),
                    path: "spec.servers[1]".into(),
                    message: "protocol \"TCP\" is not served".into(),
                },
                ACCEPTED,
                "UnsupportedValue",
            ),
            (
                Problem::IstioConflict {
                    object: vs(),
                    winner: ObjectRef::new("VirtualService", "default", "older"),
                    message: "rules unreachable".into(),
                },
                ACCEPTED,
                "Overridden",
            ),
            (
                Problem::IstioValidation {
                    object: vs(),
                    path: "spec.http[0].match[0].uri.regex".into(),
                    code: traffic_istio::Code::InvalidRegex,
                    message: "bad regex".into(),
                },
                ACCEPTED,
                traffic_istio::Code::InvalidRegex.reason(),
            ),
        ];
        for (p, type_, reason) in cases {
            let c = conditions(Some(1), &[&p]);
            let failed: Vec<_> = c.iter().filter(|c| !c.status).collect();
            assert_eq!(failed.len(), 1, "{p}");
            assert_eq!(
                (failed[0].type_, failed[0].reason.as_str()),
                (type_, reason),
                "{p}"
            );
            assert_eq!(failed[0].message, p.to_string());
        }
    }

    #[test]
    fn warnings_leave_the_conditions_true_and_more_problems_are_counted() {
        let deprecated = Problem::IstioValidation {
            object: vs(),
            path: "spec.http[0].fault.abort.percent".into(),
            code: traffic_istio::Code::Deprecated,
            message: "deprecated".into(),
        };
        assert!(conditions(None, &[&deprecated]).iter().all(|c| c.status));
        let (a, b) = (unresolved(), unresolved());
        let c = conditions(None, &[&a, &deprecated, &b]);
        assert!(
            c[1].message.ends_with("(and 1 more; see the object's Events)"),
            "{}",
            c[1].message
        );
    }

    #[test]
    fn the_patch_is_written_only_when_a_condition_changes_and_keeps_transition_times() {
        let now = "2026-01-01T00:00:00Z";
        let ok = conditions(Some(1), &[]);
        let first = status_patch(None, &ok, now).expect("new conditions");
        let status = &first["status"];
        assert_eq!(status["conditions"][0]["type"], "Accepted");
        assert_eq!(status["conditions"][0]["status"], "True");
        assert_eq!(status["conditions"][0]["observedGeneration"], 1);
        assert_eq!(status_patch(Some(status), &ok, "later"), None, "unchanged");

        // A new generation with the same verdicts: written, transition times kept.
        let gen2 = conditions(Some(2), &[]);
        let second = status_patch(Some(status), &gen2, "2026-01-02T00:00:00Z").expect("generation");
        assert_eq!(second["status"]["conditions"][0]["lastTransitionTime"], now);

        // ResolvedRefs turns false: its time moves, Accepted's does not.
        let p = unresolved();
        let bad = conditions(Some(2), &[&p]);
        let third = status_patch(Some(&second["status"]), &bad, "2026-01-03T00:00:00Z").expect("false");
        let conds = third["status"]["conditions"].as_array().expect("list");
        assert_eq!(conds[0]["lastTransitionTime"], now);
        assert_eq!(conds[1]["status"], "False");
        assert_eq!(conds[1]["reason"], "BackendNotFound");
        assert_eq!(conds[1]["lastTransitionTime"], "2026-01-03T00:00:00Z");
    }

    #[test]
    fn conditions_of_others_are_kept() {
        let current = json!({"conditions": [{"type": "Reconciled", "status": "True"}]});
        let patch = status_patch(Some(&current), &conditions(None, &[]), "t").expect("patch");
        let types: Vec<_> = patch["status"]["conditions"]
            .as_array()
            .expect("list")
            .iter()
            .map(|c| c["type"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(types, ["Reconciled", "Accepted", "ResolvedRefs"]);
    }
}
