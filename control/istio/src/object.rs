//! One Istio object of any of the four kinds, read from the JSON/YAML value of a manifest, and
//! the set of them the control plane works on.
//!
//! Fields this crate does not know are ignored in parsing (a newer Istio's manifest still loads)
//! but reported: [`Parsed::unknown_fields`] lists their paths, and validation turns each into a
//! warning.

use serde::{Deserialize, Serialize};

use crate::destination_rule::DestinationRule;
use crate::gateway::Gateway;
use crate::meta::ObjectMeta;
use crate::service_entry::ServiceEntry;
use crate::virtual_service::VirtualService;

/// The API group of every kind here.
pub const GROUP: &str = "networking.istio.io";

/// The versions served, all with one schema.
pub const VERSIONS: [&str; 3] = ["v1alpha3", "v1beta1", "v1"];

/// The four kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    VirtualService,
    DestinationRule,
    ServiceEntry,
    Gateway,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::ServiceEntry,
        Kind::Gateway,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::Gateway => "Gateway",
        }
    }

    /// The lower-case plural of the resource (`virtualservices`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::VirtualService => "virtualservices",
            Kind::DestinationRule => "destinationrules",
            Kind::ServiceEntry => "serviceentries",
            Kind::Gateway => "gateways",
        }
    }

    /// The kind an object's `apiVersion` and `kind` name, if it is one of ours
    /// (`networking.istio.io/<any served version>`).
    pub fn of(api_version: &str, kind: &str) -> Option<Kind> {
        let (group, version) = api_version.split_once('/')?;
        if group != GROUP || !VERSIONS.contains(&version) {
            return None;
        }
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object of any of the four kinds.
#[expect(
    clippy::large_enum_variant,
    reason = "transient (one object at a time); IstioConfig stores the kinds in their own lists"
)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IstioObject {
    VirtualService(VirtualService),
    DestinationRule(DestinationRule),
    ServiceEntry(ServiceEntry),
    Gateway(Gateway),
}

impl IstioObject {
    pub fn kind(&self) -> Kind {
        match self {
            IstioObject::VirtualService(_) => Kind::VirtualService,
            IstioObject::DestinationRule(_) => Kind::DestinationRule,
            IstioObject::ServiceEntry(_) => Kind::ServiceEntry,
            IstioObject::Gateway(_) => Kind::Gateway,
        }
    }

    /// The object as a manifest (`apiVersion: networking.istio.io/v1`, `kind`, `metadata`, `spec`).
    pub fn to_manifest(&self) -> Result<serde_json::Value, serde_json::Error> {
        let mut v = match self {
            IstioObject::VirtualService(o) => serde_json::to_value(o),
            IstioObject::DestinationRule(o) => serde_json::to_value(o),
            IstioObject::ServiceEntry(o) => serde_json::to_value(o),
            IstioObject::Gateway(o) => serde_json::to_value(o),
        }?;
        if let Some(map) = v.as_object_mut() {
            map.insert("apiVersion".into(), format!("{GROUP}/v1").into());
            map.insert("kind".into(), self.kind().as_str().into());
        }
        Ok(v)
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            IstioObject::VirtualService(o) => &o.metadata,
            IstioObject::DestinationRule(o) => &o.metadata,
            IstioObject::ServiceEntry(o) => &o.metadata,
            IstioObject::Gateway(o) => &o.metadata,
        }
    }
}

/// An object read from a manifest, with the paths of the spec fields that were ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub object: IstioObject,
    /// e.g. `spec.http[0].foo`, in document order.
    pub unknown_fields: Vec<String>,
}

/// Why a manifest object could not be read as one of the four kinds.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not a networking.istio.io object (apiVersion {api_version:?}, kind {kind:?})")]
    NotIstio { api_version: String, kind: String },
    #[error("{kind} {name:?}: {source}")]
    Invalid {
        kind: Kind,
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

fn str_field<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v.get(key).and_then(serde_json::Value::as_str).unwrap_or("")
}

/// Reads one object (`apiVersion`, `kind`, `metadata`, `spec`; `status` and anything else at the
/// top level are ignored).
pub fn parse_object(value: &serde_json::Value) -> Result<Parsed, ParseError> {
    let api_version = str_field(value, "apiVersion");
    let kind_name = str_field(value, "kind");
    let Some(kind) = Kind::of(api_version, kind_name) else {
        return Err(ParseError::NotIstio {
            api_version: api_version.to_string(),
            kind: kind_name.to_string(),
        });
    };
    let name = value
        .get("metadata")
        .map(|m| str_field(m, "name"))
        .unwrap_or("")
        .to_string();
    let invalid = |source| ParseError::Invalid {
        kind,
        name: name.clone(),
        source,
    };
    // Only what the typed form reads: metadata and spec.
    let mut slim = serde_json::Map::new();
    for key in ["metadata", "spec"] {
        if let Some(v) = value.get(key).filter(|v| !v.is_null()) {
            slim.insert(key.to_string(), v.clone());
        }
    }
    let slim = serde_json::Value::Object(slim);
    fn typed<T: serde::de::DeserializeOwned + Serialize>(
        v: &serde_json::Value,
    ) -> Result<(T, serde_json::Value), serde_json::Error> {
        let t: T = serde_json::from_value(v.clone())?;
        let back = serde_json::to_value(&t)?;
        Ok((t, back))
    }
    let (object, back) = match kind {
        Kind::VirtualService => typed(&slim).map(|(o, b)| (IstioObject::VirtualService(o), b)),
        Kind::DestinationRule => typed(&slim).map(|(o, b)| (IstioObject::DestinationRule(o), b)),
        Kind::ServiceEntry => typed(&slim).map(|(o, b)| (IstioObject::ServiceEntry(o), b)),
        Kind::Gateway => typed(&slim).map(|(o, b)| (IstioObject::Gateway(o), b)),
    }
    .map_err(invalid)?;
    let mut unknown_fields = Vec::new();
    if let Some(spec) = value.get("spec") {
        let empty = serde_json::Value::Null;
        unknown_paths(
            spec,
            back.get("spec").unwrap_or(&empty),
            "spec",
            &mut unknown_fields,
        );
    }
    Ok(Parsed {
        object,
        unknown_fields,
    })
}

/// Whether a value the typed form may leave out when serializing (a default).
fn is_empty_value(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => true,
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Paths present in `original` but not in `known` (the typed form serialized back), skipping
/// values a typed form omits as defaults.
fn unknown_paths(original: &serde_json::Value, known: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    use serde_json::Value;
    match (original, known) {
        (Value::Object(orig), known) => {
            for (key, value) in orig {
                match known.get(key) {
                    Some(k) => unknown_paths(value, k, &format!("{path}.{key}"), out),
                    None if is_empty_value(value) => {}
                    None => out.push(format!("{path}.{key}")),
                }
            }
        }
        (Value::Array(orig), Value::Array(known)) => {
            for (i, (o, k)) in orig.iter().zip(known).enumerate() {
                unknown_paths(o, k, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The Istio objects of a mesh model, by kind. Field names follow the plural kinds
/// (`virtualServices:`), each entry an object as `kubectl get -o yaml` prints it without
/// `apiVersion`/`kind`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_services: Vec<VirtualService>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_rules: Vec<DestinationRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_entries: Vec<ServiceEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<Gateway>,
}

impl IstioConfig {
    pub fn is_empty(&self) -> bool {
        self.virtual_services.is_empty()
            && self.destination_rules.is_empty()
            && self.service_entries.is_empty()
            && self.gateways.is_empty()
    }

    /// Adds one object to the list of its kind.
    pub fn push(&mut self, object: IstioObject) {
        match object {
            IstioObject::VirtualService(o) => self.virtual_services.push(o),
            IstioObject::DestinationRule(o) => self.destination_rules.push(o),
            IstioObject::ServiceEntry(o) => self.service_entries.push(o),
            IstioObject::Gateway(o) => self.gateways.push(o),
        }
    }

    /// Every object, kind by kind in [`Kind::ALL`] order.
    pub fn objects(&self) -> impl Iterator<Item = IstioObject> + '_ {
        let vs = self
            .virtual_services
            .iter()
            .cloned()
            .map(IstioObject::VirtualService);
        let dr = self
            .destination_rules
            .iter()
            .cloned()
            .map(IstioObject::DestinationRule);
        let se = self
            .service_entries
            .iter()
            .cloned()
            .map(IstioObject::ServiceEntry);
        let gw = self.gateways.iter().cloned().map(IstioObject::Gateway);
        vs.chain(dr).chain(se).chain(gw)
    }
}

/// Reads every document of a (multi-document) YAML text that is one of the four kinds; other
/// documents (Services, Deployments, ...) are skipped. A document that is not YAML at all is an
/// error for that document only.
pub fn parse_yaml_documents(text: &str) -> Vec<Result<Parsed, YamlError>> {
    let mut out = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = match serde_json::Value::deserialize(doc) {
            Ok(v) => v,
            Err(source) => {
                out.push(Err(YamlError::Yaml { index, source }));
                continue;
            }
        };
        if value.is_null() {
            continue; // an empty document (`---` at the end)
        }
        let api_version = str_field(&value, "apiVersion");
        let kind = str_field(&value, "kind");
        if Kind::of(api_version, kind).is_none() {
            continue;
        }
        out.push(parse_object(&value).map_err(|source| YamlError::Object { index, source }));
    }
    out
}

/// A document of a YAML text that did not read.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    #[error("document {index}: {source}")]
    Yaml {
        index: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("document {index}: {source}")]
    Object {
        index: usize,
        #[source]
        source: ParseError,
    },
}
