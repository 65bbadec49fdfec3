//! `traffic-agent`: the privileged node agent.
//!
//! Subcommands:
//! - `run`: the daemon (watch this node's pods, start Envoy sidecars, redirect, annotate).
//! - `proxies`: the sidecars on this node, with their redirect mode.
//! - `logs <id-prefix> [-f]`, `exec <id-prefix> -- <cmd>`: operator access to a sidecar.
//! - `check [--json]`: probe the node (kernel, cgroup v2, bpffs, BPF program types, iptables
//!   flavours) and print which redirect datapath the agent would use, and why.
mod cli;

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
    /// Run the node agent.
    Run(Box<cli::RunArgs>),
    /// List the Envoy sidecars on this node with their state and redirect mode.
    Proxies(cli::ProxiesArgs),
    /// Print a sidecar's Envoy log.
    Logs(cli::LogsArgs),
    /// Run a command in a sidecar (`traffic-agent exec <id> -- cmd args`).
    Exec(cli::ExecArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Check { json } => check(json),
        Command::Run(args) => cli::block_on(cli::run(*args)),
        Command::Proxies(args) => cli::block_on(cli::proxies(args)),
        Command::Logs(args) => cli::block_on(cli::logs(args)),
        Command::Exec(args) => {
            let code = cli::block_on(cli::exec(args))?;
            std::process::exit(i32::try_from(code).unwrap_or(1));
        }
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
