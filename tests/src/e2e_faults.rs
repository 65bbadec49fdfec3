//! Pure helpers of the e2e fault scenarios (no I/O): what callers saw while a sidecar, the agent or
//! the control plane was killed — the in-pod call loop's lines ([`pod_calls`], [`CallTally`]) and
//! the `load-client` summary ([`LoadSummary`]).
use std::collections::BTreeMap;

/// One call of the in-pod loop, printed as `<uptime seconds> <port> OK|FAIL <reply or error>`
/// (`/proc/uptime` is the host's too, so the test can place its own actions on the same clock).
#[derive(Debug, Clone, PartialEq)]
pub struct PodCall {
    pub at: f64,
    pub port: u16,
    pub ok: bool,
    pub text: String,
}

/// The calls in the loop's output (lines that do not parse are skipped).
pub fn pod_calls(out: &str) -> Vec<PodCall> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.splitn(4, ' ');
            let at = f.next()?.parse().ok()?;
            let port = f.next()?.parse().ok()?;
            let ok = match f.next()? {
                "OK" => true,
                "FAIL" => false,
                _ => return None,
            };
            Some(PodCall {
                at,
                port,
                ok,
                text: f.next().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// How the calls to one port went around a fault at time `fault` (uptime seconds).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallTally {
    pub ok_before: usize,
    pub ok_after: usize,
    /// Failed with "Connection refused" (what a fail-closed pod sees while no proxy listens).
    pub refused: usize,
    /// Failed otherwise (reset, timeout, an HTTP error), with the texts seen.
    pub other: BTreeMap<String, usize>,
    /// The first successful call after the fault.
    pub first_ok_after: Option<f64>,
    /// The first failed call after the fault (when the fault actually struck the callers).
    pub first_failure: Option<f64>,
    /// The first successful call after that failure (when callers were served again).
    pub recovered: Option<f64>,
}

impl CallTally {
    pub fn of(calls: &[PodCall], port: u16, fault: f64) -> Self {
        let mut t = CallTally::default();
        for c in calls.iter().filter(|c| c.port == port) {
            if c.at >= fault {
                match (c.ok, t.first_failure) {
                    (false, None) => t.first_failure = Some(c.at),
                    (true, Some(_)) if t.recovered.is_none() => t.recovered = Some(c.at),
                    _ => {}
                }
            }
            match (c.ok, c.at >= fault) {
                (true, false) => t.ok_before += 1,
                (true, true) => {
                    t.ok_after += 1;
                    t.first_ok_after = Some(t.first_ok_after.map_or(c.at, |f: f64| f.min(c.at)));
                }
                (false, _) if c.text.contains("Connection refused") => t.refused += 1,
                (false, _) => *t.other.entry(c.text.clone()).or_default() += 1,
            }
        }
        t
    }
    pub fn other_failures(&self) -> usize {
        self.other.values().sum()
    }
    /// From the first failure after the fault to the first success after it (seconds).
    pub fn window(&self) -> Option<f64> {
        Some(self.recovered? - self.first_failure?)
    }
}

/// The one JSON line `load-client` prints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadSummary {
    pub sent: u64,
    /// Outcome name (`ok`, `refused`, `reset`, `timeout`, `http_error`, `other`) -> count.
    pub outcomes: BTreeMap<String, u64>,
    pub first_failure_ms: Option<u64>,
    pub last_failure_ms: Option<u64>,
    pub p99_us: Option<u64>,
    pub max_us: Option<u64>,
}

impl LoadSummary {
    /// Parses the last line of `load-client`'s output that is its JSON summary.
    pub fn parse(out: &str) -> Option<Self> {
        let v: serde_json::Value = out
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l.trim()).ok())?;
        let num = |k: &str| v.get(k).and_then(serde_json::Value::as_u64);
        Some(LoadSummary {
            sent: num("sent")?,
            outcomes: v
                .get("outcomes")?
                .as_object()?
                .iter()
                .filter_map(|(k, n)| Some((k.clone(), n.as_u64()?)))
                .collect(),
            first_failure_ms: num("first_failure_ms"),
            last_failure_ms: num("last_failure_ms"),
            p99_us: num("p99_us"),
            max_us: num("max_us"),
        })
    }
    pub fn ok(&self) -> u64 {
        self.outcomes.get("ok").copied().unwrap_or(0)
    }
    /// Requests that failed (refused, reset, timed out, an HTTP error...).
    pub fn failed(&self) -> u64 {
        self.outcomes
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "ok" | "unfinished"))
            .map(|(_, n)| n)
            .sum()
    }
    /// Requests the overloaded machine did not complete in time (neither ok nor failed).
    pub fn unfinished(&self) -> u64 {
        self.outcomes.get("unfinished").copied().unwrap_or(0)
    }
}

/// The value of an unlabelled Prometheus sample `name` in a `/metrics` text.
pub fn prometheus_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn the_call_loop_lines_are_read_and_tallied_around_the_fault() {
        let out = "\
100.10 9080 OK reviews-v1-abc v1
100.20 9081 FAIL wget: error getting response: Connection reset by peer
100.50 9080 FAIL wget: can't connect to remote host (10.96.0.9): Connection refused
100.60 9080 FAIL wget: can't connect to remote host (10.96.0.9): Connection refused
garbage
100.70 9080 FAIL wget: download timed out
101.90 9080 OK reviews-v2-def v2
102.00 9080 OK reviews-v3-ghi v3
";
        let calls = pod_calls(out);
        assert_eq!(calls.len(), 7);
        assert_eq!(calls[1].port, 9081);
        let t = CallTally::of(&calls, 9080, 100.4);
        assert_eq!(
            (t.ok_before, t.ok_after, t.refused, t.other_failures()),
            (1, 2, 2, 1)
        );
        assert_eq!(t.first_ok_after, Some(101.9));
        assert_eq!((t.first_failure, t.recovered), (Some(100.5), Some(101.9)));
        assert!((t.window().unwrap() - 1.4).abs() < 1e-9);
        assert_eq!(t.other.keys().next().unwrap(), "wget: download timed out");
        let blocked = CallTally::of(&calls, 9081, 0.0);
        assert_eq!((blocked.ok_after, blocked.other_failures()), (0, 1));
    }

    #[test]
    fn the_load_client_summary_is_read_from_its_last_json_line() {
        let out = "noise\n{\"sent\":6000,\"elapsed_ms\":30010,\"outcomes\":{\"ok\":5980,\"refused\":10,\"unfinished\":10},\"first_failure_ms\":1200,\"last_failure_ms\":1300,\"p50_us\":900,\"p99_us\":4000,\"max_us\":9000}\n";
        let s = LoadSummary::parse(out).unwrap();
        assert_eq!((s.sent, s.ok(), s.failed(), s.unfinished()), (6000, 5980, 10, 10));
        assert_eq!((s.first_failure_ms, s.p99_us), (Some(1200), Some(4000)));
        assert_eq!(LoadSummary::parse("no json here"), None);
    }

    #[test]
    fn a_prometheus_sample_is_found_by_its_exact_name() {
        let m =
            "# HELP x\ntraffic_agent_reconcile_seconds_sum 0.5\ntraffic_agent_reconcile_seconds_count 3\n";
        assert_eq!(
            prometheus_value(m, "traffic_agent_reconcile_seconds_count"),
            Some(3.0)
        );
        assert_eq!(prometheus_value(m, "traffic_agent_reconcile_seconds"), None);
    }
}
