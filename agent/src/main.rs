//! `traffic-agent`: the privileged node agent.
//!
//! Subcommands:
//! - `run`: the daemon (watch this node's pods, start Envoy sidecars, redirect, annotate).
//! - `proxies`: the sidecars on this node, with their redirect mode.
//! - `logs <id-prefix> [-f]`, `exec <id-prefix> -- <cmd>`: operator access to a sidecar.
//! - `uninstall --daemonset <ns>/<name>`: drain every node (the chart's pre-delete hook).
//! - `check [--json]`: probe the node (kernel, cgroup v2, bpffs, BPF program types, iptables
//!   flavours) and print which redirect datapath the agent would use, and why, and which
//!   container runtime it found.
mod cli;
mod runtime_args;
mod xds_args;

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
        #[command(flatten)]
        runtime: runtime_args::RuntimeArgs,
    },
    /// Run the node agent.
    Run(Box<cli::RunArgs>),
    /// List the Envoy sidecars on this node with their state and redirect mode.
    Proxies(cli::ProxiesArgs),
    /// Print a sidecar's Envoy log.
    Logs(cli::LogsArgs),
    /// Run a command in a sidecar (`traffic-agent exec <id> -- cmd args`).
    Exec(cli::ExecArgs),
    /// Tell every agent of the DaemonSet to remove all it made (redirects, sidecars, annotations,
    /// pinned eBPF objects, iptables chains) and wait until they have: run before deleting the agents.
    Uninstall(cli::UninstallArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Check { json, runtime } => check(json, &runtime),
        Command::Run(args) => {
            join_host_cgroup_namespace();
            cli::block_on(cli::run(*args))
        }
        Command::Uninstall(args) => cli::block_on(cli::uninstall(args)),
        Command::Proxies(args) => cli::block_on(cli::proxies(args)),
        Command::Logs(args) => cli::block_on(cli::logs(args)),
        Command::Exec(args) => {
            let code = cli::block_on(cli::exec(args))?;
            std::process::exit(i32::try_from(code).unwrap_or(1));
        }
    }
}

fn check(json: bool, runtime: &runtime_args::RuntimeArgs) -> anyhow::Result<()> {
    let report = probe::probe();
    let decision = probe::decide(&report);
    // Without an API client: decided by the sockets (the agent itself asks the node object).
    let found = runtime.decide(None);
    if json {
        let runtime = match &found {
            Ok((kind, reason)) => serde_json::json!({ "kind": kind, "reason": reason }),
            Err(e) => serde_json::json!({ "kind": null, "reason": format!("{e:#}") }),
        };
        let out = serde_json::json!({ "probe": report, "decision": decision, "runtime": runtime });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", render(&report, &decision));
        match &found {
            Ok((kind, reason)) => println!("runtime       {kind} ({reason})"),
            Err(e) => println!("runtime       none ({e:#})"),
        }
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

/// In a container with a private cgroup namespace (the default on cgroup v2 hosts),
/// `/proc/<pid>/cgroup` shows paths relative to the container's own cgroup, so pod cgroups would
/// resolve wrongly. With hostPID, `/proc/1` is the host's init: join its cgroup namespace before
/// any thread starts (setns applies to the calling thread; later threads inherit it).
fn join_host_cgroup_namespace() {
    use std::os::fd::AsRawFd;
    let ns = |p: &str| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    match (ns("/proc/1/ns/cgroup"), ns("/proc/self/ns/cgroup")) {
        (Ok(host), Ok(own)) if host != own => {}
        _ => return,
    }
    match std::fs::File::open("/proc/1/ns/cgroup") {
        // SAFETY: setns(2) on an fd we own; no other thread exists yet.
        Ok(f) if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWCGROUP) } == 0 => {
            tracing::info!("joined the host's cgroup namespace (pid 1's)");
        }
        Ok(_) => tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot join the host's cgroup namespace; pod cgroups may resolve wrongly"
        ),
        Err(error) => tracing::warn!(%error, "cannot open /proc/1/ns/cgroup"),
    }
}
