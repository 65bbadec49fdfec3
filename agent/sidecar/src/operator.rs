//! What the operator CLI (`traffic-agent proxies | logs | exec`) needs from this crate, minus the
//! I/O: resolving a container-id prefix among our sidecars, and the `proxies` table.

use crate::{RuntimeError, Sidecar, SidecarState};

/// Errors of the operator commands.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("empty container id prefix")]
    EmptyPrefix,
    #[error("no sidecar container id starts with {prefix:?}")]
    UnknownPrefix { prefix: String },
    #[error("container id prefix {prefix:?} is ambiguous: {}", candidates.join(", "))]
    AmbiguousPrefix { prefix: String, candidates: Vec<String> },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("write output: {0}")]
    Output(#[source] std::io::Error),
}

/// The one sidecar whose container id starts with `prefix` (an exact id always wins).
pub fn resolve_prefix<'a>(sidecars: &'a [Sidecar], prefix: &str) -> Result<&'a Sidecar, OperatorError> {
    let prefix = prefix.trim();
    if prefix.is_empty() {
        return Err(OperatorError::EmptyPrefix);
    }
    let prefix_lc = prefix.to_ascii_lowercase();
    if let Some(exact) = sidecars.iter().find(|s| s.container_id == prefix_lc) {
        return Ok(exact);
    }
    let matches: Vec<&Sidecar> = sidecars
        .iter()
        .filter(|s| s.container_id.starts_with(&prefix_lc))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(OperatorError::UnknownPrefix {
            prefix: prefix.to_string(),
        }),
        many => Err(OperatorError::AmbiguousPrefix {
            prefix: prefix.to_string(),
            candidates: many
                .iter()
                .map(|s| short_id(&s.container_id).to_string())
                .collect(),
        }),
    }
}

/// The 12-character id Docker shows.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// One row of `traffic-agent proxies`. The agent fills `redirect` (its redirect mode for the pod).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProxyRow {
    pub container_id: String,
    pub pod: String,
    pub namespace: String,
    pub pod_uid: String,
    pub state: SidecarState,
    pub status: String,
    pub redirect: Option<String>,
}

impl From<&Sidecar> for ProxyRow {
    fn from(s: &Sidecar) -> Self {
        ProxyRow {
            container_id: short_id(&s.container_id).to_string(),
            pod: s.pod.name.clone(),
            namespace: s.pod.namespace.clone(),
            pod_uid: s.pod.uid.clone(),
            state: s.state,
            status: s.status.clone(),
            redirect: None,
        }
    }
}

fn state_name(s: SidecarState) -> &'static str {
    match s {
        SidecarState::Created => "created",
        SidecarState::Running => "running",
        SidecarState::Exited => "exited",
        SidecarState::Other => "other",
    }
}

/// The rows as an aligned text table (header `CONTAINER ID  POD  NAMESPACE  STATE  STATUS  REDIRECT`),
/// sorted by namespace and pod; a missing redirect mode shows as `-`.
pub fn table(rows: &[ProxyRow]) -> String {
    let mut sorted: Vec<&ProxyRow> = rows.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.namespace, &a.pod, &a.container_id).cmp(&(&b.namespace, &b.pod, &b.container_id))
    });
    let mut cells: Vec<[String; 6]> = vec![[
        "CONTAINER ID".into(),
        "POD".into(),
        "NAMESPACE".into(),
        "STATE".into(),
        "STATUS".into(),
        "REDIRECT".into(),
    ]];
    cells.extend(sorted.iter().map(|r| {
        [
            r.container_id.clone(),
            r.pod.clone(),
            r.namespace.clone(),
            state_name(r.state).to_string(),
            r.status.clone(),
            r.redirect.clone().unwrap_or_else(|| "-".into()),
        ]
    }));
    let mut widths = [0usize; 6];
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in &cells {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}   "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use crate::PodRef;

    fn sidecar(id: &str, pod: &str) -> Sidecar {
        Sidecar {
            container_id: id.into(),
            pod: PodRef {
                uid: format!("uid-{pod}"),
                namespace: "shop".into(),
                name: pod.into(),
            },
            state: SidecarState::Running,
            status: "Up 3 minutes".into(),
            cgroup: None,
        }
    }

    fn fleet() -> Vec<Sidecar> {
        vec![
            sidecar("abc123def4567890", "reviews-v1"),
            sidecar("abd000000000000", "reviews-v2"),
            sidecar("abc", "ratings"),
            sidecar("ffee00112233", "details"),
        ]
    }

    #[test]
    fn a_unique_prefix_resolves_to_its_sidecar() {
        let f = fleet();
        assert_eq!(resolve_prefix(&f, "ff").unwrap().pod.name, "details");
        assert_eq!(resolve_prefix(&f, "abc1").unwrap().pod.name, "reviews-v1");
        assert_eq!(resolve_prefix(&f, " ABD ").unwrap().pod.name, "reviews-v2");
    }

    #[test]
    fn an_exact_id_wins_over_longer_ids_it_prefixes() {
        let f = fleet();
        assert_eq!(resolve_prefix(&f, "abc").unwrap().pod.name, "ratings");
    }

    #[test]
    fn an_ambiguous_prefix_names_its_candidates() {
        match resolve_prefix(&fleet(), "ab") {
            Err(OperatorError::AmbiguousPrefix { prefix, candidates }) => {
                assert_eq!(prefix, "ab");
                assert_eq!(candidates, vec!["abc123def456", "abd000000000", "abc"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_and_empty_prefixes_are_errors() {
        assert!(matches!(
            resolve_prefix(&fleet(), "0"),
            Err(OperatorError::UnknownPrefix { .. })
        ));
        assert!(matches!(
            resolve_prefix(&[], "ab"),
            Err(OperatorError::UnknownPrefix { .. })
        ));
        assert!(matches!(
            resolve_prefix(&fleet(), "  "),
            Err(OperatorError::EmptyPrefix)
        ));
    }

    #[test]
    fn the_table_is_aligned_sorted_and_shows_missing_redirects_as_a_dash() {
        let mut rows: Vec<ProxyRow> = fleet().iter().map(ProxyRow::from).collect();
        rows[0].redirect = Some("ebpf".into());
        rows[3].state = SidecarState::Exited;
        rows[3].status = "Exited (1) 2 seconds ago".into();
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(
            lines[0].starts_with("CONTAINER ID   POD          NAMESPACE   STATE"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("ffee00112233   details      shop        exited "),
            "{t}"
        );
        assert!(lines[1].ends_with("-"), "{t}");
        assert!(lines[2].contains("ratings"), "{t}");
        assert!(
            lines[3].starts_with("abc123def456   reviews-v1 ") && lines[3].ends_with("ebpf"),
            "{t}"
        );
        let status_col = lines[0].find("STATUS").unwrap();
        assert_eq!(lines[3].find("Up 3 minutes"), Some(status_col), "{t}");
    }
}
