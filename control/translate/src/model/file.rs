//! Loading the model from YAML (and its duplicate check) and writing it back.
use std::path::Path;

use super::MeshModel;

/// Why a model file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid model YAML{}: {source}", path.as_deref().map(|p| format!(" in {p}")).unwrap_or_default())]
    Yaml {
        path: Option<String>,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("duplicate {kind} {namespace}/{name} in the model")]
    Duplicate {
        kind: &'static str,
        namespace: String,
        name: String,
    },
}

impl ModelError {
    /// Names `path` in a YAML error that does not name its file yet.
    pub fn in_file(self, path: &Path) -> Self {
        match self {
            ModelError::Yaml { path: None, source } => ModelError::Yaml {
                path: Some(path.display().to_string()),
                source,
            },
            other => other,
        }
    }
}

/// The text of a model file.
pub fn read_model_file(path: &Path) -> Result<String, ModelError> {
    std::fs::read_to_string(path).map_err(|source| ModelError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl MeshModel {
    /// Parse a model from YAML text and check it for duplicates.
    pub fn from_yaml_str(text: &str) -> Result<Self, ModelError> {
        let model: MeshModel =
            serde_yaml::from_str(text).map_err(|source| ModelError::Yaml { path: None, source })?;
        model.check_unique()?;
        Ok(model)
    }

    /// Read and parse a YAML model file.
    pub fn from_yaml_file(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        Self::from_yaml_str(&read_model_file(path)?).map_err(|e| e.in_file(path))
    }

    /// Render the model as YAML (for `config` dumps and fixtures).
    pub fn to_yaml(&self) -> Result<String, ModelError> {
        serde_yaml::to_string(self).map_err(|source| ModelError::Yaml { path: None, source })
    }

    /// Refuses two objects of the same kind with the same namespace and name (done by the parsers;
    /// public for sources that assemble a model themselves).
    pub fn check_unique(&self) -> Result<(), ModelError> {
        fn check<'a>(
            kind: &'static str,
            items: impl Iterator<Item = (&'a str, &'a str)>,
        ) -> Result<(), ModelError> {
            // Hashing: 10,000 pods are checked on every model file re-read.
            let mut seen = std::collections::HashSet::with_capacity(items.size_hint().0);
            for (ns, name) in items {
                if !seen.insert((ns, name)) {
                    return Err(ModelError::Duplicate {
                        kind,
                        namespace: ns.to_string(),
                        name: name.to_string(),
                    });
                }
            }
            Ok(())
        }
        check("Service", self.services.iter().map(|s| (&*s.namespace, &*s.name)))?;
        check("Pod", self.pods.iter().map(|p| (&*p.namespace, &*p.name)))?;
        check(
            "Ingress",
            self.ingresses.iter().map(|i| (&*i.namespace, &*i.name)),
        )?;
        check("Secret", self.secrets.iter().map(|s| (&*s.namespace, &*s.name)))?;
        let mut seen = std::collections::BTreeSet::new();
        for w in &self.workloads {
            if !seen.insert((w.kind, &*w.namespace, &*w.name)) {
                return Err(ModelError::Duplicate {
                    kind: w.kind.as_str(),
                    namespace: w.namespace.clone(),
                    name: w.name.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on bad fixtures")]
mod tests {
    use super::*;
    use crate::model::{PortProtocol, TargetPort, SMALL};

    #[test]
    fn yaml_model_loads_with_kubernetes_spelling_and_defaults() {
        let m = MeshModel::from_yaml_str(SMALL).unwrap();
        let svc = &m.services[0];
        assert_eq!(svc.namespace, "default");
        assert_eq!(svc.ports[0].target_port, Some(TargetPort::Name("http".into())));
        assert_eq!(svc.ports[0].protocol, PortProtocol::Tcp);
        // Unquoted YAML booleans and numbers still arrive as label strings.
        let w = &m.workloads[0];
        assert_eq!(w.labels["traffic.envoy.enabled"], "true");
        assert_eq!(w.labels["traffic.endpoint.weight"], "10");
        assert_eq!(m.owner_of(&m.pods[0]).unwrap().name, "reviews-v1");
        assert_eq!(m.pods[0].node_id(), "reviews-v1-1.default");
    }

    #[test]
    fn unknown_fields_and_duplicates_are_rejected() {
        assert!(MeshModel::from_yaml_str("services: [{name: a, bogus: 1}]").is_err());
        let dup = "services: [{name: a}, {name: a}]";
        assert!(matches!(
            MeshModel::from_yaml_str(dup),
            Err(ModelError::Duplicate { kind: "Service", .. })
        ));
    }

    #[test]
    fn model_round_trips_through_yaml() {
        let m = MeshModel::from_yaml_str(SMALL).unwrap();
        let again = MeshModel::from_yaml_str(&m.to_yaml().unwrap()).unwrap();
        assert_eq!(m, again);
    }

    #[test]
    fn the_bookinfo_example_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/bookinfo.yaml");
        let m = MeshModel::from_yaml_file(path).unwrap();
        assert_eq!(m.services.len(), 4);
    }
}
