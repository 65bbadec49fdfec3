//! Per-program BPF run statistics (`bpftool prog show` of the programs attached to a cgroup):
//! what each eBPF program costs per run while `kernel.bpf_stats_enabled` is on.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use crate::cmd;

/// Per-program BPF run statistics (from `bpftool prog show`).
#[derive(Debug, Clone, Default)]
pub struct ProgStats {
    pub name: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// Run statistics of every BPF program attached to `cgroups`, by program id.
pub fn attached_program_stats(cgroups: &[PathBuf]) -> anyhow::Result<BTreeMap<u64, ProgStats>> {
    let mut out = BTreeMap::new();
    for cg in cgroups {
        let shown = cmd::output(
            Command::new("bpftool")
                .arg("-j")
                .arg("cgroup")
                .arg("show")
                .arg(cg),
        )?;
        let attached: serde_json::Value = if shown.trim().is_empty() {
            serde_json::Value::Array(vec![])
        } else {
            serde_json::from_str(&shown).context("parse bpftool cgroup show")?
        };
        for prog in attached.as_array().into_iter().flatten() {
            let Some(id) = prog.get("id").and_then(|v| v.as_u64()) else {
                continue;
            };
            let info =
                cmd::output(Command::new("bpftool").args(["-j", "prog", "show", "id", &id.to_string()]))?;
            let info: serde_json::Value = serde_json::from_str(&info).context("parse bpftool prog show")?;
            let field = |k: &str| info.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
            out.insert(
                id,
                ProgStats {
                    name: info
                        .get("name")
                        .and_then(|v| v.as_str())
                        .unwrap_or("?")
                        .to_string(),
                    run_cnt: field("run_cnt"),
                    run_time_ns: field("run_time_ns"),
                },
            );
        }
    }
    Ok(out)
}
