//! Pure helpers of the end-to-end suite (no I/O): reading Envoy's admin output, tallying replies of
//! the test app, percentiles, names.
use std::collections::BTreeMap;
use std::time::Duration;

/// The value of one counter or gauge in Envoy's `/stats` text (`name: value` lines).
pub fn stat(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|line| {
        let (n, v) = line.split_once(": ")?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Sum of the counters of one Envoy cluster whose name ends in `suffix` (e.g. `upstream_rq_completed`).
/// Envoy names cluster stats `cluster.<name or alt_stat_name>.<suffix>`; the alt_stat_name of our
/// clusters is `<port>|<ns>|<svc>.outbound`, so both spellings are accepted.
pub fn cluster_stat(stats: &str, cluster: &str, suffix: &str) -> Option<u64> {
    let names = [
        format!("cluster.{cluster}.{suffix}"),
        format!("cluster.{cluster}.outbound.{suffix}"),
    ];
    names.iter().find_map(|n| stat(stats, n))
}

/// Sum of every stat whose name satisfies `pick` (e.g. a listener's `downstream_cx_total`).
pub fn stat_sum(stats: &str, pick: impl Fn(&str) -> bool) -> u64 {
    stats
        .lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(n, _)| pick(n))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// Connections Envoy accepted on its outbound listener (the redirect target, port `port`).
pub fn outbound_connections(stats: &str, port: u16) -> u64 {
    let needle = format!("_{port}.downstream_cx_total");
    stat_sum(stats, |n| n.starts_with("listener.") && n.ends_with(&needle))
}

/// Hosts of `cluster` in Envoy's `/clusters` text: `<cluster>::<ip:port>::<field>::<value>` lines,
/// keyed by address, with their `weight` (hosts without a weight line count with weight 1).
pub fn cluster_hosts(clusters: &str, cluster: &str) -> BTreeMap<String, u32> {
    let mut hosts = BTreeMap::new();
    let prefix = format!("{cluster}::");
    for line in clusters.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let mut parts = rest.splitn(3, "::");
        let (Some(addr), Some(field), value) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        // Cluster-level lines (`default_priority::…`, `added_via_api::true`) have no address.
        if !addr.contains(':') {
            continue;
        }
        let entry = hosts.entry(addr.to_string()).or_insert(1);
        if field == "weight" {
            if let Some(w) = value.and_then(|v| v.trim().parse().ok()) {
                *entry = w;
            }
        }
    }
    hosts
}

/// Replies of the test app are `<pod name> <version>`; counts per version, plus how many lines
/// were something else (errors, empty replies).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub by_version: BTreeMap<String, usize>,
    pub other: usize,
}

impl Tally {
    pub fn of(output: &str) -> Self {
        let mut t = Tally::default();
        for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
            match line.split_once(' ') {
                Some((pod, version)) if pod.starts_with("reviews-") && version.starts_with('v') => {
                    *t.by_version.entry(version.to_string()).or_default() += 1
                }
                _ => t.other += 1,
            }
        }
        t
    }
    pub fn count(&self, version: &str) -> usize {
        self.by_version.get(version).copied().unwrap_or(0)
    }
    pub fn total(&self) -> usize {
        self.by_version.values().sum::<usize>() + self.other
    }
}

/// The `q`-quantile (0..=1) of `samples` by nearest rank; `None` when empty.
pub fn percentile(samples: &[Duration], q: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort();
    let rank = (q.clamp(0.0, 1.0) * s.len() as f64).ceil() as usize;
    Some(s[rank.saturating_sub(1).min(s.len() - 1)])
}

/// A Kubernetes-safe name: `<prefix>-<suffix>`, lowercase, at most 63 characters.
pub fn dns_name(prefix: &str, suffix: &str) -> String {
    let clean: String = format!("{prefix}-{suffix}")
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    clean
        .chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string()
}

/// One timing line of the suite's timings file: `<mode>\t<what>\t<milliseconds>`.
pub fn timing_line(mode: &str, what: &str, d: Duration) -> String {
    format!("{mode}\t{what}\t{}\n", d.as_millis())
}

/// p50/p99 per (mode, what) of a timings file, rendered as a small table.
pub fn summarize_timings(text: &str) -> String {
    let mut groups: BTreeMap<(String, String), Vec<Duration>> = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.split('\t');
        let (Some(mode), Some(what), Some(ms)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let Ok(ms) = ms.trim().parse::<u64>() else {
            continue;
        };
        groups
            .entry((mode.to_string(), what.to_string()))
            .or_default()
            .push(Duration::from_millis(ms));
    }
    let mut out = String::new();
    for ((mode, what), samples) in &groups {
        let p = |q| percentile(samples, q).map(|d| d.as_millis()).unwrap_or(0);
        out.push_str(&format!(
            "{mode:<9} {what:<34} n={:<3} p50={:>6} ms  p99={:>6} ms\n",
            samples.len(),
            p(0.5),
            p(0.99)
        ));
    }
    out
}

/// The cluster's variables among the NUL-separated `k=v` pairs `env -0` printed after sourcing the
/// kit's env.sh: `KUBECONFIG`, `DOCKER_HOST`, `PATH` (kubectl, docker), `ENVOY_BIN` and every
/// `TRAFFIC_E2E_*`.
pub fn cluster_vars(env0: &str) -> Vec<(String, String)> {
    env0.split('\0')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| {
            k.starts_with("TRAFFIC_E2E_") || matches!(*k, "KUBECONFIG" | "DOCKER_HOST" | "PATH" | "ENVOY_BIN")
        })
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_counters_are_found_under_the_name_and_the_alt_stat_name() {
        let stats = "cluster.9080|ns|reviews.outbound.upstream_rq_completed: 7\n\
                     cluster.admin.upstream_rq_completed: 3\n";
        assert_eq!(
            cluster_stat(stats, "9080|ns|reviews", "upstream_rq_completed"),
            Some(7)
        );
        assert_eq!(
            cluster_stat(stats, "9080|ns|other", "upstream_rq_completed"),
            None
        );
        assert_eq!(stat("a.b: 12\n", "a.b"), Some(12));
        let l = "listener.0.0.0.0_15001.downstream_cx_total: 4\nlistener.[__]_15001.downstream_cx_total: 1\n\
                 listener.0.0.0.0_8900.downstream_cx_total: 9\nlistener_manager.total_listeners_active: 3\n";
        assert_eq!(outbound_connections(l, 15001), 5);
    }

    #[test]
    fn cluster_membership_and_weights_are_read_from_the_clusters_page() {
        let text = "9080|ns|reviews::default_priority::max_connections::1024\n\
                    9080|ns|reviews::added_via_api::true\n\
                    9080|ns|reviews::172.17.0.2:9080::cx_active::0\n\
                    9080|ns|reviews::172.17.0.2:9080::weight::100\n\
                    9080|ns|reviews::172.17.0.4:9080::weight::10\n\
                    9080|ns|reviewsx::172.17.0.9:9080::weight::1\n";
        let hosts = cluster_hosts(text, "9080|ns|reviews");
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts["172.17.0.2:9080"], 100);
        assert_eq!(hosts["172.17.0.4:9080"], 10);
    }

    #[test]
    fn replies_are_tallied_per_version_and_junk_is_counted_apart() {
        let t = Tally::of("reviews-v1-abc-1 v1\nreviews-v2-abc-2 v2\nreviews-v1-abc-1 v1\n\nwget: error\n");
        assert_eq!((t.count("v1"), t.count("v2"), t.count("v3")), (2, 1, 0));
        assert_eq!((t.other, t.total()), (1, 4));
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&s, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&s, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&s[..1], 0.99), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn names_are_valid_kubernetes_names() {
        assert_eq!(dns_name("e2e-Weights_1", "ab12"), "e2e-weights-1-ab12");
        assert!(dns_name(&"x".repeat(80), "s").len() <= 63);
    }

    #[test]
    fn timings_are_summarized_per_mode_and_kind() {
        let text = [
            timing_line("ebpf", "label->redirect", Duration::from_millis(100)),
            timing_line("ebpf", "label->redirect", Duration::from_millis(300)),
            "garbage\n".to_string(),
        ]
        .concat();
        let s = summarize_timings(&text);
        assert!(s.contains("n=2"), "{s}");
        assert!(s.contains("p50=   100 ms"), "{s}");
        assert!(s.contains("p99=   300 ms"), "{s}");
    }

    #[test]
    fn only_the_clusters_variables_are_taken_from_env_output() {
        let out =
            "HOME=/root\0KUBECONFIG=/run/x/kubeconfig\0PATH=/a:/b\0X=a=b\0TRAFFIC_E2E_NODE_IP=10.201.0.1\0";
        assert_eq!(
            cluster_vars(out),
            vec![
                ("KUBECONFIG".to_string(), "/run/x/kubeconfig".to_string()),
                ("PATH".to_string(), "/a:/b".to_string()),
                ("TRAFFIC_E2E_NODE_IP".to_string(), "10.201.0.1".to_string()),
            ]
        );
    }
}
