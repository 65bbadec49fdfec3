//! `traffic-agent`: the privileged node agent.
//!
//! Subcommands:
//! - `check [--json]`: probe the node (kernel, cgroup v2, bpffs, BPF program types, iptables
//!   flavours) and print which redirect datapath the agent would use, and why.
use clap::{Parser, Subcommand};
use traffic_redirect::probe::{self, Check, Decision, ProbeReport};

#[derive(Parser)]
#[command(name = "traffic-agent", about = "traffic-manager node agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Probe this node and print the redirect mode the agent would choose, and why.
    Check {
        /// Print the probe report and the decision as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Check { json } => check(json),
    }
}

fn check(json: bool) -> anyhow::Result<()> {
    let report = probe::probe();
    let decision = probe::decide(&report);
    if json {
        let out = serde_json::json!({ "probe": report, "decision": decision });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", render(&report, &decision));
    }
    // A node with no usable datapath is an error for scripts (exit 1), after printing why.
    anyhow::ensure!(decision.mode.is_some(), "no redirect datapath works on this node");
    Ok(())
}

fn mark(check: &Check) -> String {
    match &check.error {
        None => "ok".to_string(),
        Some(e) => format!("FAILED: {e}"),
    }
}

fn render(report: &ProbeReport, decision: &Decision) -> String {
    let path = |p: &Option<std::path::PathBuf>| match p {
        Some(p) => p.display().to_string(),
        None => "not mounted".to_string(),
    };
    let mut out = String::new();
    out.push_str(&format!("kernel        {}\n", report.kernel_release));
    out.push_str(&format!("cgroup2       {}\n", path(&report.cgroup2)));
    out.push_str(&format!("bpffs         {}\n", path(&report.bpffs)));
    for c in &report.bpf_programs {
        out.push_str(&format!("bpf {:<18} {}\n", c.name, mark(c)));
    }
    for f in &report.iptables {
        out.push_str(&format!("{:<22} {}\n", f.check.name, mark(&f.check)));
    }
    let mode = decision
        .mode
        .map(|m| m.to_string())
        .unwrap_or_else(|| "none".into());
    out.push_str(&format!(
        "mode          {mode}\nreason        {}\n",
        decision.reason
    ));
    out
}
