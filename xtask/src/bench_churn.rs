//! `cargo xtask bench churn --cycles 500`: the e2e suite's churn scenario at length — enabled pods
//! created and deleted in parallel batches on the running test cluster, with traffic-control and
//! traffic-agent run as for `cargo xtask e2e`; prints each node count (BPF map entries, pinned
//! objects, sidecar containers, iptables state, pod cgroups) before and after, and fails unless
//! every one is back to its baseline.
use crate::e2e;

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Pods created and deleted in all.
    #[arg(long, default_value_t = 500)]
    pub cycles: usize,
    /// Pods created at once (each batch is created, waited for, deleted, waited for).
    #[arg(long, default_value_t = 25)]
    pub batch: usize,
    /// Redirect mode of the agent.
    #[arg(long, default_value = "ebpf")]
    pub mode: String,
    /// Skip building (use what is already built).
    #[arg(long)]
    pub no_build: bool,
}

pub fn run(o: Options) -> anyhow::Result<()> {
    anyhow::ensure!(o.cycles > 0 && o.batch > 0, "--cycles and --batch must be > 0");
    e2e::run(e2e::Options {
        modes: vec![o.mode],
        filter: Some("after_enabled_pods_are_created_and_deleted_in_batches".into()),
        xds_port: 15010,
        http_port: 19090,
        // Many sidecars start at once: more of them in parallel.
        agent_args: vec!["--concurrency".into(), "8".into()],
        no_build: o.no_build,
        // The running cluster's.
        runtime: None,
        keep_logs: false,
        nocapture: true,
        test_env: vec![
            ("TRAFFIC_E2E_CHURN_CYCLES".into(), o.cycles.to_string()),
            ("TRAFFIC_E2E_CHURN_BATCH".into(), o.batch.to_string()),
        ],
        // As installed: authenticated xDS over TLS, tokens renewed at the default 80 %.
        insecure_xds: false,
        token_renew_seconds: 2880,
    })
}
