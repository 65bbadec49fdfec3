//! Plain Kubernetes manifests as a model source: one or more multi-document YAML (or JSON) files,
//! or directories of them, with objects as a user writes them or as `kubectl get -o yaml` prints
//! them (`kind: List` included). Services, Pods (with `status.podIP`), Deployments, ReplicaSets,
//! StatefulSets, DaemonSets, Ingresses, Secrets and the four `networking.istio.io` kinds are read;
//! other kinds are skipped.
//!
//! The objects go through the same conversion as the Kubernetes watches
//! (`traffic_kube_source::convert::build_model`), so a manifest gives the model the cluster would.
//! Two conveniences for hand-written manifests: an object without `metadata.namespace` is in
//! `default` (as `kubectl apply` puts it), and a Pod with `status.podIP` but no conditions at all is
//! taken as Ready. A Secret's `stringData` is read like `data`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodCondition, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::ByteString;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use traffic_istio::object::{parse_object, Kind, ParseError, Parsed};
use traffic_istio::IstioConfig;
use traffic_kube_source::convert::{build_model, Inputs};
use traffic_translate::model::MeshModel;

/// Why manifests could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: document {index}: invalid YAML: {source}")]
    Yaml {
        path: String,
        index: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{path}: document {index}: {kind} {name:?}: {source}")]
    Object {
        path: String,
        index: usize,
        kind: String,
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

/// An Istio object that did not read (a field of the wrong type), with where it was.
#[derive(Debug)]
pub struct Unreadable {
    pub path: String,
    pub index: usize,
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub error: ParseError,
}

/// What a set of manifests holds.
#[derive(Debug, Default)]
pub struct Manifests {
    /// Services, Pods, workloads, Ingresses, Secrets as the model.
    pub model: MeshModel,
    /// The Istio objects in file order, each with its unknown fields.
    pub istio: Vec<Parsed>,
    /// Istio objects that did not read at all (they are left out).
    pub unreadable: Vec<Unreadable>,
    /// How many objects of other kinds were skipped.
    pub skipped: usize,
}

impl Manifests {
    /// The Istio objects (as parsed, before validation), grouped by kind.
    pub fn istio_config(&self) -> IstioConfig {
        let mut c = IstioConfig::default();
        for p in &self.istio {
            c.push(p.object.clone());
        }
        c
    }
}

/// Whether `text` looks like Kubernetes manifests (its first document has `apiVersion` and
/// `kind`) rather than a model file.
pub fn looks_like_manifests(text: &str) -> bool {
    for doc in serde_yaml::Deserializer::from_str(text) {
        let Ok(v) = serde_json::Value::deserialize(doc) else {
            return false;
        };
        if v.is_null() {
            continue;
        }
        return v.get("apiVersion").is_some() && v.get("kind").is_some();
    }
    false
}

/// Whether `paths` are manifests: a directory, more than one file, or one file that
/// [`looks_like_manifests`]. A single model file is not.
pub fn are_manifests(paths: &[PathBuf]) -> Result<bool, ManifestError> {
    match paths {
        [one] if !one.is_dir() => Ok(looks_like_manifests(&read(one)?)),
        _ => Ok(true),
    }
}

fn read(path: &Path) -> Result<String, ManifestError> {
    std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The files `paths` name: files as given, directories walked (recursively, sorted) for
/// `*.yaml`, `*.yml` and `*.json`.
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ManifestError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ManifestError> {
    let err = |source| ManifestError::Read {
        path: dir.display().to_string(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(err)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    entries.sort();
    for e in entries {
        if e.is_dir() {
            walk(&e, out)?;
        } else if e
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| ["yaml", "yml", "json"].contains(&x))
        {
            out.push(e);
        }
    }
    Ok(())
}

/// Reads every file of `paths` (see [`expand`]).
pub fn load(paths: &[PathBuf]) -> Result<Manifests, ManifestError> {
    let mut texts = Vec::new();
    for file in expand(paths)? {
        texts.push((file.display().to_string(), read(&file)?));
    }
    parse(texts.iter().map(|(p, t)| (p.as_str(), t.as_str())))
}

/// One object of a file, with where it came from.
struct Doc<'a> {
    path: &'a str,
    index: usize,
    value: serde_json::Value,
}

fn str_at<'v>(v: &'v serde_json::Value, pointer: &str) -> &'v str {
    v.pointer(pointer)
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
}

/// Fills in what `kubectl apply` and the API server would (see the module doc).
fn normalize(v: &mut serde_json::Value) {
    if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        if meta
            .get("namespace")
            .and_then(|n| n.as_str())
            .is_none_or(str::is_empty)
        {
            meta.insert("namespace".into(), "default".into());
        }
    }
}

/// Parses `(path, text)` pairs.
pub fn parse<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Manifests, ManifestError> {
    let mut docs = Vec::new();
    for (path, text) in files {
        for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = serde_json::Value::deserialize(doc).map_err(|source| ManifestError::Yaml {
                path: path.to_string(),
                index,
                source,
            })?;
            if value.is_null() {
                continue;
            }
            // `kind: List` (what `kubectl get -o yaml` prints for several objects).
            if value.get("kind").and_then(|k| k.as_str()) == Some("List") {
                for item in value
                    .get("items")
                    .and_then(|i| i.as_array())
                    .into_iter()
                    .flatten()
                {
                    docs.push(Doc {
                        path,
                        index,
                        value: item.clone(),
                    });
                }
            } else {
                docs.push(Doc { path, index, value });
            }
        }
    }
    let mut inputs = Inputs::default();
    let mut out = Manifests::default();
    for mut doc in docs {
        normalize(&mut doc.value);
        let api_version = str_at(&doc.value, "/apiVersion").to_string();
        let kind = str_at(&doc.value, "/kind").to_string();
        if let Some(istio_kind) = Kind::of(&api_version, &kind) {
            match parse_object(&doc.value) {
                Ok(parsed) => out.istio.push(parsed),
                Err(error) => out.unreadable.push(Unreadable {
                    path: doc.path.to_string(),
                    index: doc.index,
                    kind: istio_kind,
                    namespace: str_at(&doc.value, "/metadata/namespace").to_string(),
                    name: str_at(&doc.value, "/metadata/name").to_string(),
                    error,
                }),
            }
            continue;
        }
        fn typed<T: DeserializeOwned>(doc: &Doc<'_>, kind: &str) -> Result<Arc<T>, ManifestError> {
            serde_json::from_value(doc.value.clone())
                .map(Arc::new)
                .map_err(|source| ManifestError::Object {
                    path: doc.path.to_string(),
                    index: doc.index,
                    kind: kind.to_string(),
                    name: str_at(&doc.value, "/metadata/name").to_string(),
                    source,
                })
        }
        match (api_version.as_str(), kind.as_str()) {
            ("v1", "Service") => inputs.services.push(typed::<Service>(&doc, &kind)?),
            ("v1", "Pod") => inputs
                .pods
                .push(Arc::new(ready_if_unknown(typed::<Pod>(&doc, &kind)?))),
            ("v1", "Secret") => inputs
                .secrets
                .push(Arc::new(string_data(typed::<Secret>(&doc, &kind)?))),
            ("apps/v1", "Deployment") => inputs.deployments.push(typed::<Deployment>(&doc, &kind)?),
            ("apps/v1", "ReplicaSet") => inputs.replica_sets.push(typed::<ReplicaSet>(&doc, &kind)?),
            ("apps/v1", "StatefulSet") => inputs.stateful_sets.push(typed::<StatefulSet>(&doc, &kind)?),
            ("apps/v1", "DaemonSet") => inputs.daemon_sets.push(typed::<DaemonSet>(&doc, &kind)?),
            ("networking.k8s.io/v1", "Ingress") => inputs.ingresses.push(typed::<Ingress>(&doc, &kind)?),
            _ => out.skipped += 1,
        }
    }
    inputs.istio = out.istio_config();
    out.model = build_model(&inputs);
    Ok(out)
}

/// A Pod with `status.podIP` and no conditions at all (a hand-written manifest) is Ready.
fn ready_if_unknown(pod: Arc<Pod>) -> Pod {
    let mut pod = Arc::unwrap_or_clone(pod);
    if let Some(status) = &mut pod.status {
        if status.pod_ip.is_some() && status.conditions.is_none() {
            status.conditions = Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..PodCondition::default()
            }]);
        }
    }
    pod
}

/// `stringData` folded into `data`, as the API server does on write.
fn string_data(secret: Arc<Secret>) -> Secret {
    let mut secret = Arc::unwrap_or_clone(secret);
    if let Some(sd) = secret.string_data.take() {
        let data = secret.data.get_or_insert_with(Default::default);
        for (k, v) in sd {
            data.insert(k, ByteString(v.into_bytes()));
        }
    }
    secret
}

/// Logs the Istio objects' problems (the same as `traffic-control analyze` prints).
pub fn log_istio_problems(m: &Manifests) {
    let report = crate::analyze::report(m);
    for f in &report.findings {
        match f.severity {
            traffic_istio::Severity::Error => tracing::warn!(problem = %f, "istio object problem"),
            traffic_istio::Severity::Warning => tracing::info!(problem = %f, "istio object warning"),
        }
    }
}

/// What identifies a revision of a set of files cheaply: each file's path, modification time and
/// size (a file added to or removed from a directory changes it too).
fn stamps(paths: &[PathBuf]) -> Option<Vec<(PathBuf, Option<std::time::SystemTime>, u64)>> {
    let files = expand(paths).ok()?;
    files
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok()?;
            Some((f, meta.modified().ok(), meta.len()))
        })
        .collect()
}

/// Loads `paths` and re-reads them when a file changes, appears or disappears; the receiver
/// always holds the last good model (an unreadable revision is logged and skipped).
pub fn watch_manifests(
    paths: Vec<PathBuf>,
    poll: std::time::Duration,
) -> Result<
    (
        tokio::sync::watch::Receiver<Arc<MeshModel>>,
        tokio::task::JoinHandle<()>,
    ),
    ManifestError,
> {
    let mut last = stamps(&paths);
    let first = load(&paths)?;
    log_istio_problems(&first);
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(first.model));
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if tx.is_closed() {
                return;
            }
            let now = stamps(&paths);
            if now == last {
                continue;
            }
            last = now;
            let p = paths.clone();
            let Ok(loaded) = tokio::task::spawn_blocking(move || load(&p)).await else {
                tracing::warn!("manifest loader panicked; stopping the watch");
                return;
            };
            match loaded {
                Ok(m) => {
                    log_istio_problems(&m);
                    if **tx.borrow() != m.model {
                        tracing::info!("manifests changed");
                        tx.send_replace(Arc::new(m.model));
                    }
                }
                Err(error) => tracing::warn!(%error, "manifests invalid; keeping the last good model"),
            }
        }
    });
    Ok((rx, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use traffic_translate::model::{OwnerRef, WorkloadKind};

    fn bookinfo_dir() -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/manifests/bookinfo"
        ))
    }

    #[test]
    fn a_directory_of_manifests_becomes_the_model_the_watches_would_build() {
        let m = load(&[bookinfo_dir()]).expect("loads");
        let model = &m.model;
        assert_eq!(model.services.len(), 1);
        let svc = &model.services[0];
        assert_eq!(
            (svc.namespace.as_str(), svc.name.as_str()),
            ("default", "reviews")
        );
        assert_eq!(svc.labels["traffic.port.9080"], "http");
        let names: Vec<_> = model.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["reviews-v1-7f9c-abcde", "reviews-v2-handwritten"]);
        let v1 = &model.pods[0];
        assert_eq!(v1.ip, Some("172.17.0.5".parse().expect("ip")));
        assert_eq!(
            v1.owner,
            Some(OwnerRef {
                kind: WorkloadKind::Deployment,
                name: "reviews-v1".into()
            })
        );
        assert_eq!(v1.named_ports.get("http"), Some(&9080));
        // A hand-written pod with an IP and no conditions is ready, in `default`.
        let v2 = &model.pods[1];
        assert!(v2.ready);
        assert_eq!(v2.namespace, "default");
        assert_eq!(model.endpoints(svc, &svc.ports[0]).len(), 2);
        assert_eq!(model.workloads.len(), 1);
        assert_eq!(m.istio.len(), 2);
        assert_eq!(m.skipped, 1, "the ConfigMap");
        let c = m.istio_config();
        assert_eq!((c.virtual_services.len(), c.destination_rules.len()), (1, 1));
    }

    #[test]
    fn manifests_and_model_files_are_told_apart() {
        assert!(looks_like_manifests(
            "---\napiVersion: v1\nkind: Service\nmetadata: {name: a}\n"
        ));
        assert!(!looks_like_manifests("services:\n- name: a\n"));
        let model_file = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/translate/examples/bookinfo.yaml"
        ));
        assert!(!are_manifests(&[model_file]).expect("reads"));
        assert!(are_manifests(&[bookinfo_dir()]).expect("dir"));
    }

    #[test]
    fn gateway_credential_secrets_and_string_data_enter_the_model() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: cert, namespace: web}\ntype: kubernetes.io/tls\n\
            stringData: {tls.crt: CERT, tls.key: KEY}\n---\n\
            apiVersion: v1\nkind: Secret\nmetadata: {name: other, namespace: web}\ntype: kubernetes.io/tls\n\
            stringData: {tls.crt: CERT, tls.key: KEY}\n---\n\
            apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: web}\n\
            spec: {selector: {app: gw}, servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: [a.example], tls: {mode: SIMPLE, credentialName: cert}}]}\n";
        let m = parse([("inline.yaml", text)]).expect("parses");
        let secrets: Vec<_> = m
            .model
            .secrets
            .iter()
            .map(|s| (s.name.as_str(), s.cert_pem.as_str()))
            .collect();
        assert_eq!(secrets, [("cert", "CERT")]);
    }

    #[test]
    fn a_wrongly_typed_istio_object_is_set_aside_and_others_fail_loudly() {
        let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec: {hosts: 3}\n";
        let m = parse([("a.yaml", text)]).expect("istio errors are not fatal");
        assert_eq!(m.unreadable.len(), 1);
        assert_eq!(m.unreadable[0].name, "a");
        let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: 3}\n";
        let err = parse([("b.yaml", bad)]).expect_err("a bad Service is an error");
        assert!(
            err.to_string().starts_with("b.yaml: document 0: Service \"a\""),
            "{err}"
        );
    }
}
