//! Invalid `traffic.*` labels found in a model, tied to the object that carries them (pure).
//!
//! Each one becomes a Warning Event on that object (see [`crate::events`]); the setting itself is
//! ignored by translation, the rest of the object's configuration still applies.

use traffic_labels::{LabelError, ObjectKind};
use traffic_translate::model::MeshModel;
use traffic_translate::snapshot::ObjectRef;

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
