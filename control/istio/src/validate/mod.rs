//! Validation: each object into the list of its problems (stable codes, see [`Code`]) and a
//! validated form, the object with invalid parts left out and deprecated fields mapped onto their
//! replacements, which is what the translator consumes.
//!
//! An invalid rule is left out on its own: `http[i]` / `tcp[i]` of a VirtualService, a subset, a
//! `portLevelSettings[]` entry or one top-level setting of a DestinationRule, a port or endpoint of
//! a ServiceEntry, a server of a Gateway. Only problems with what the whole object means (no
//! name, no hosts, an unknown `resolution`) leave the object out.

mod checks;
mod destination_rule;
mod gateway;
mod problem;
mod service_entry;
mod virtual_service;

#[cfg(test)]
mod tests;

pub use destination_rule::validate_destination_rule;
pub use gateway::validate_gateway;
pub use problem::{Code, Dropped, Problem, Severity};
pub use service_entry::validate_service_entry;
pub use virtual_service::validate_virtual_service;

use crate::object::{IstioConfig, IstioObject, Kind, Parsed};

/// The validated form of one object and its problems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    /// `None` when the object as a whole is unusable.
    pub object: Option<IstioObject>,
    pub problems: Vec<Problem>,
}

impl Validated {
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(|p| p.severity() == Severity::Error)
    }
}

/// Validates one object.
pub fn validate(object: &IstioObject) -> Validated {
    let (object, problems) = match object {
        IstioObject::VirtualService(o) => {
            let (v, p) = validate_virtual_service(o);
            (v.map(IstioObject::VirtualService), p)
        }
        IstioObject::DestinationRule(o) => {
            let (v, p) = validate_destination_rule(o);
            (v.map(IstioObject::DestinationRule), p)
        }
        IstioObject::ServiceEntry(o) => {
            let (v, p) = validate_service_entry(o);
            (v.map(IstioObject::ServiceEntry), p)
        }
        IstioObject::Gateway(o) => {
            let (v, p) = validate_gateway(o);
            (v.map(IstioObject::Gateway), p)
        }
    };
    Validated { object, problems }
}

/// The warnings for fields a parse ignored (`TM0002`).
pub fn unknown_field_problems(paths: &[String]) -> Vec<Problem> {
    paths
        .iter()
        .map(|path| Problem {
            code: Code::UnknownField,
            path: path.clone(),
            message: "unknown field; ignored".to_string(),
            dropped: Dropped::Nothing,
        })
        .collect()
}

/// Validates a parsed object, its unknown fields first.
pub fn validate_parsed(parsed: &Parsed) -> Validated {
    let mut v = validate(&parsed.object);
    let mut problems = unknown_field_problems(&parsed.unknown_fields);
    problems.append(&mut v.problems);
    v.problems = problems;
    v
}

/// Which object a report is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    /// `VirtualService/default/reviews`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// The problems of one object (possibly none), with what status conditions need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectReport {
    pub object: ObjectRef,
    pub uid: Option<String>,
    pub generation: Option<i64>,
    /// Whether the object is used at all (false when its problems left it out).
    pub accepted: bool,
    pub problems: Vec<Problem>,
}

/// A whole configuration, validated: the usable objects in validated form, and a report per
/// input object (in input order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidatedConfig {
    pub config: IstioConfig,
    pub reports: Vec<ObjectReport>,
}

impl ValidatedConfig {
    pub fn error_count(&self) -> usize {
        self.problems()
            .filter(|(_, p)| p.severity() == Severity::Error)
            .count()
    }

    /// Every problem with its object.
    pub fn problems(&self) -> impl Iterator<Item = (&ObjectRef, &Problem)> {
        self.reports
            .iter()
            .flat_map(|r| r.problems.iter().map(move |p| (&r.object, p)))
    }
}

fn report(object: &IstioObject, v: Validated) -> (ObjectReport, Option<IstioObject>) {
    let meta = object.metadata();
    let report = ObjectReport {
        object: ObjectRef {
            kind: object.kind(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
        },
        uid: meta.uid.clone(),
        generation: meta.generation,
        accepted: v.object.is_some(),
        problems: v.problems,
    };
    (report, v.object)
}

/// Validates every object of `config`.
pub fn validate_config(config: &IstioConfig) -> ValidatedConfig {
    let mut out = ValidatedConfig::default();
    for object in config.objects() {
        let (r, valid) = report(&object, validate(&object));
        out.reports.push(r);
        if let Some(valid) = valid {
            out.config.push(valid);
        }
    }
    out
}

/// Validates parsed objects (with their unknown-field warnings).
pub fn validate_all_parsed<'a>(parsed: impl IntoIterator<Item = &'a Parsed>) -> ValidatedConfig {
    let mut out = ValidatedConfig::default();
    for p in parsed {
        let (r, valid) = report(&p.object, validate_parsed(p));
        out.reports.push(r);
        if let Some(valid) = valid {
            out.config.push(valid);
        }
    }
    out
}
