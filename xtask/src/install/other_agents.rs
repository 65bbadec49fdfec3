//! Other `traffic-agent run` processes on the node (the host-process e2e suite's agent would
//! fight the in-cluster one).
use std::time::{Duration, Instant};

use anyhow::bail;

/// Pids of `traffic-agent run` processes on the node, with whether each runs in a pod.
pub(super) fn agent_processes() -> Vec<(u32, bool)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| traffic_tests::install_leftovers::is_agent_run(&c))
        })
        .map(|pid| {
            let in_pod =
                std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains("kubepods"));
            (pid, in_pod)
        })
        .collect()
}

pub(super) fn wait_no_other_agent(timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let others = agent_processes();
        if others.is_empty() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("other traffic-agent run processes stayed on the node for {timeout:?}: {others:?}");
        }
        eprintln!(
            "e2e-install: waiting for other traffic-agent run processes (pid, in a pod) to end: {others:?} \
             (an in-cluster agent would fight them)"
        );
        std::thread::sleep(Duration::from_secs(20));
    }
}
