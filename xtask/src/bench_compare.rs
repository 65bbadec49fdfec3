//! `cargo xtask bench compare OLD.json NEW.json`: the ratio NEW/OLD of every figure two runs of a
//! benchmark (`--json`) have in common, so a change can be judged against the previous run by the
//! figures that hold still (CPU per connection or per push) rather than by eye.
use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::Value;

#[derive(clap::Args, Debug)]
pub struct Options {
    /// A `--json` report of the earlier run.
    pub old: PathBuf,
    /// A `--json` report of the later run (same benchmark).
    pub new: PathBuf,
}

pub fn run(o: Options) -> anyhow::Result<()> {
    let read = |p: &PathBuf| -> anyhow::Result<Value> {
        let text = std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))
    };
    let (old, new) = (read(&o.old)?, read(&o.new)?);
    let (ob, nb) = (old.get("bench"), new.get("bench"));
    anyhow::ensure!(ob == nb, "different benchmarks: {ob:?} vs {nb:?}");
    print!("{}", render(&compare(&flatten(&old), &flatten(&new))));
    Ok(())
}

/// One figure of both runs.
#[derive(Debug, PartialEq)]
pub enum Row {
    Both { key: String, old: f64, new: f64 },
    OnlyOld(String),
    OnlyNew(String),
}

/// Every number in `v` by its dotted path (`ebpf.cpu_us_per_conn.median`). Arrays (raw samples)
/// are left out: the summaries next to them are what compares.
pub fn flatten(v: &Value) -> BTreeMap<String, f64> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, f64>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            Value::Number(n) => {
                if let Some(f) = n.as_f64() {
                    out.insert(prefix.to_string(), f);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk("", v, &mut out);
    out
}

pub fn compare(old: &BTreeMap<String, f64>, new: &BTreeMap<String, f64>) -> Vec<Row> {
    let mut rows: Vec<Row> = old
        .iter()
        .map(|(k, o)| match new.get(k) {
            Some(n) => Row::Both {
                key: k.clone(),
                old: *o,
                new: *n,
            },
            None => Row::OnlyOld(k.clone()),
        })
        .collect();
    rows.extend(
        new.keys()
            .filter(|k| !old.contains_key(*k))
            .map(|k| Row::OnlyNew(k.clone())),
    );
    rows
}

pub fn render(rows: &[Row]) -> String {
    let width = rows
        .iter()
        .map(|r| match r {
            Row::Both { key, .. } | Row::OnlyOld(key) | Row::OnlyNew(key) => key.len(),
        })
        .max()
        .unwrap_or(6)
        .max(6);
    let mut s = format!(
        "{:<width$} {:>14} {:>14} {:>9}\n",
        "figure", "old", "new", "new/old"
    );
    for r in rows {
        match r {
            Row::Both { key, old, new } => {
                let ratio = if *old == 0.0 {
                    "-".to_string()
                } else {
                    format!("{:.3}", new / old)
                };
                s.push_str(&format!("{key:<width$} {old:>14.3} {new:>14.3} {ratio:>9}\n"));
            }
            Row::OnlyOld(key) => s.push_str(&format!("{key:<width$} (only in the old run)\n")),
            Row::OnlyNew(key) => s.push_str(&format!("{key:<width$} (only in the new run)\n")),
        }
    }
    s
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nested_numbers_are_flattened_by_dotted_path_and_arrays_and_text_are_left_out() {
        let v = json!({"bench": "redirect", "ebpf": {"cpu": {"min": 1.0, "median": 2}, "rounds": [1, 2]}});
        let f = flatten(&v);
        assert_eq!(f.len(), 2);
        assert_eq!(f["ebpf.cpu.min"], 1.0);
        assert_eq!(f["ebpf.cpu.median"], 2.0);
    }

    #[test]
    fn figures_of_both_runs_get_a_ratio_and_the_rest_is_named() {
        let old = flatten(&json!({"a": 2.0, "gone": 1}));
        let new = flatten(&json!({"a": 3.0, "added": 1}));
        let rows = compare(&old, &new);
        assert_eq!(
            rows,
            vec![
                Row::Both {
                    key: "a".into(),
                    old: 2.0,
                    new: 3.0
                },
                Row::OnlyOld("gone".into()),
                Row::OnlyNew("added".into()),
            ]
        );
        let text = render(&rows);
        assert!(text.contains("1.500"), "{text}");
        assert!(
            text.contains("gone") && text.contains("only in the old run"),
            "{text}"
        );
    }

    #[test]
    fn a_zero_old_figure_has_no_ratio() {
        let rows = compare(&flatten(&json!({"e": 0})), &flatten(&json!({"e": 5})));
        assert!(render(&rows).lines().nth(1).unwrap().trim_end().ends_with('-'));
    }
}
