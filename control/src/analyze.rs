//! `traffic-control analyze <files or dirs>`: the validation the control plane applies to Istio
//! objects, offline. One line per problem:
//! `<code> <severity> <kind>/<namespace>/<name> <field path>: <message>`; the codes are stable
//! (the table is in the `traffic-istio` crate documentation and the README). Exit status 1 when any
//! problem is an error (something is left out), 0 otherwise.

use std::path::PathBuf;

use traffic_istio::validate::{validate_all_parsed, Dropped, ObjectRef, Severity};

use crate::manifests::{self, ManifestError};

/// One printed problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub code: &'static str,
    pub severity: Severity,
    pub object: String,
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} {}: {}",
            self.code, self.severity, self.object, self.path, self.message
        )
    }
}

/// The result of analyzing a set of manifests.
#[derive(Debug, Default)]
pub struct Report {
    /// Istio objects read (including unreadable ones).
    pub objects: usize,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count()
    }

    pub fn warnings(&self) -> usize {
        self.findings.len() - self.errors()
    }

    /// The text `analyze` prints on stdout (one line per finding).
    pub fn lines(&self) -> String {
        self.findings.iter().map(|f| format!("{f}\n")).collect()
    }

    /// The summary `analyze` prints on stderr.
    pub fn summary(&self) -> String {
        format!(
            "{} Istio objects: {} errors, {} warnings",
            self.objects,
            self.errors(),
            self.warnings()
        )
    }
}

/// Analyzes already-read manifests.
pub fn report(m: &manifests::Manifests) -> Report {
    let mut out = Report {
        objects: m.istio.len() + m.unreadable.len(),
        findings: Vec::new(),
    };
    for u in &m.unreadable {
        let object = ObjectRef {
            kind: u.kind,
            namespace: u.namespace.clone(),
            name: u.name.clone(),
        };
        let error = match &u.error {
            traffic_istio::object::ParseError::Invalid { source, .. } => source.to_string(),
            other => other.to_string(),
        };
        out.findings.push(Finding {
            code: traffic_istio::Code::Unreadable.as_str(),
            severity: Severity::Error,
            object: object.to_string(),
            path: "spec".to_string(),
            message: format!("{error} ({} document {}; object ignored)", u.path, u.index),
        });
    }
    let validated = validate_all_parsed(&m.istio);
    for (object, p) in validated.problems() {
        let dropped = match &p.dropped {
            Dropped::Nothing => String::new(),
            Dropped::Part(part) => format!(" ({part} ignored)"),
            Dropped::Object => " (object ignored)".to_string(),
        };
        out.findings.push(Finding {
            code: p.code.as_str(),
            severity: p.severity(),
            object: object.to_string(),
            path: p.path.clone(),
            message: format!("{}{dropped}", p.message),
        });
    }
    out
}

/// Reads and analyzes `paths` (files or directories).
pub fn analyze(paths: &[PathBuf]) -> Result<Report, ManifestError> {
    Ok(report(&manifests::load(paths)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_print_with_code_severity_object_and_path() {
        let dir = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/manifests/bookinfo"
        ));
        let r = analyze(&[dir]).expect("loads");
        assert_eq!(r.objects, 2);
        assert_eq!(
            r.lines(),
            "TM1015 warning VirtualService/default/reviews spec.http[0].fault.abort.percent: \
             percent (integer) was removed in Istio 1.5 (which then aborts nothing); read as 100%\n\
             TM1001 error VirtualService/default/reviews spec.http[1].match[0].uri.regex: \
             \"/a(?=b)\" is not a valid RE2 regex: look-around, including look-ahead and look-behind, \
             is not supported (spec.http[1] ignored)\n"
        );
        assert_eq!((r.errors(), r.warnings()), (1, 1));
        assert_eq!(r.summary(), "2 Istio objects: 1 errors, 1 warnings");
    }

    #[test]
    fn an_unreadable_object_is_an_error() {
        let m = manifests::parse([(
            "a.yaml",
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: web}\nspec: {servers: 1}\n",
        )])
        .expect("parses");
        let r = report(&m);
        assert_eq!(r.errors(), 1);
        let line = r.lines();
        assert!(
            line.starts_with("TM0001 error Gateway/web/g spec: invalid type"),
            "{line}"
        );
    }
}
