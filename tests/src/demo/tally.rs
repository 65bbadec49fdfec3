//! Pure bookkeeping of the demo's requests: parse `demo-http load` lines, count them, check a split.
use std::collections::BTreeMap;

/// One request as `demo-http load` reported it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// An HTTP response: status code, latency, first line of the body.
    Response { status: u16, ms: f64, body: String },
    /// No HTTP response (connect refused, unreachable, reset...).
    Failure { ms: f64, error: String },
}

impl Outcome {
    /// Parses `resp status=200 ms=1.23 body=reviews-v1` or `fail ms=0.10 error=connect: ...`.
    pub fn parse(line: &str) -> Option<Self> {
        if let Some(rest) = line.strip_prefix("resp ") {
            let mut status = None;
            let mut ms = None;
            let mut body = String::new();
            for field in rest.split(' ') {
                match field.split_once('=')? {
                    ("status", v) => status = v.parse().ok(),
                    ("ms", v) => ms = v.parse().ok(),
                    ("body", v) => body = v.to_string(),
                    _ => {}
                }
            }
            return Some(Self::Response {
                status: status?,
                ms: ms?,
                body,
            });
        }
        let rest = line.strip_prefix("fail ms=")?;
        let (ms, error) = rest.split_once(" error=")?;
        Some(Self::Failure {
            ms: ms.parse().ok()?,
            error: error.to_string(),
        })
    }

    pub fn ms(&self) -> f64 {
        match self {
            Self::Response { ms, .. } | Self::Failure { ms, .. } => *ms,
        }
    }
}

/// Counts of a batch of requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// 200 responses by body (the backend's name).
    pub ok_by_body: BTreeMap<String, usize>,
    /// Non-200 responses by status code.
    pub other_status: BTreeMap<u16, usize>,
    /// Requests without a response, by error message.
    pub failures: BTreeMap<String, usize>,
    /// Every latency in milliseconds, sorted.
    pub latencies_ms: Vec<f64>,
}

impl Tally {
    pub fn from_outcomes<'a>(outcomes: impl IntoIterator<Item = &'a Outcome>) -> Self {
        let mut t = Self::default();
        for o in outcomes {
            t.latencies_ms.push(o.ms());
            match o {
                Outcome::Response {
                    status: 200, body, ..
                } => *t.ok_by_body.entry(body.clone()).or_default() += 1,
                Outcome::Response { status, .. } => *t.other_status.entry(*status).or_default() += 1,
                Outcome::Failure { error, .. } => *t.failures.entry(error.clone()).or_default() += 1,
            }
        }
        t.latencies_ms.sort_by(f64::total_cmp);
        t
    }

    /// Parses every recognised line of `demo-http load` output.
    pub fn from_output(stdout: &str) -> Self {
        let outcomes: Vec<Outcome> = stdout.lines().filter_map(Outcome::parse).collect();
        Self::from_outcomes(&outcomes)
    }

    pub fn total(&self) -> usize {
        self.latencies_ms.len()
    }

    pub fn ok(&self) -> usize {
        self.ok_by_body.values().sum()
    }

    pub fn status_count(&self, status: u16) -> usize {
        if status == 200 {
            self.ok()
        } else {
            self.other_status.get(&status).copied().unwrap_or(0)
        }
    }

    pub fn failed(&self) -> usize {
        self.failures.values().sum()
    }

    /// The `p`-th percentile latency (nearest rank), 0 when empty.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.latencies_ms.len() as f64).ceil() as usize;
        self.latencies_ms[rank.clamp(1, self.latencies_ms.len()) - 1]
    }

    /// Share (percent) of all requests that got a 200 from `body`.
    pub fn share_pct(&self, body: &str) -> f64 {
        pct(self.ok_by_body.get(body).copied().unwrap_or(0), self.total())
    }
}

/// `part` as a percentage of `whole` (0 when `whole` is 0).
pub fn pct(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// Checks that every expected backend got its weight's share of the 200s within `tolerance_pct`
/// percentage points, and that nothing else answered. `expected`: backend name -> weight.
pub fn check_split(
    tally: &Tally,
    expected: &BTreeMap<String, u32>,
    tolerance_pct: f64,
) -> Result<(), String> {
    let total_weight: u32 = expected.values().sum();
    let ok = tally.ok();
    if ok == 0 || total_weight == 0 {
        return Err(format!("no successful responses ({} requests)", tally.total()));
    }
    if ok != tally.total() {
        return Err(format!(
            "{} of {} requests did not get a 200 (statuses {:?}, failures {:?})",
            tally.total() - ok,
            tally.total(),
            tally.other_status,
            tally.failures
        ));
    }
    let mut problems = Vec::new();
    for (name, &weight) in expected {
        let want = 100.0 * f64::from(weight) / f64::from(total_weight);
        let got = pct(tally.ok_by_body.get(name).copied().unwrap_or(0), ok);
        if (got - want).abs() > tolerance_pct {
            problems.push(format!("{name}: {got:.1}% (want {want:.1}% ±{tolerance_pct})"));
        }
    }
    for name in tally.ok_by_body.keys().filter(|n| !expected.contains_key(*n)) {
        problems.push(format!("unexpected backend {name:?} answered"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// A text bar of `width` characters for a percentage.
pub fn bar(pct: f64, width: usize) -> String {
    "#".repeat(((pct / 100.0) * width as f64).round().clamp(0.0, width as f64) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(w: &[(&str, u32)]) -> BTreeMap<String, u32> {
        w.iter().map(|(n, w)| (n.to_string(), *w)).collect()
    }

    #[test]
    fn client_lines_are_parsed_into_responses_and_failures() {
        assert_eq!(
            Outcome::parse("resp status=503 ms=0.42 body=fault_filter_abort"),
            Some(Outcome::Response {
                status: 503,
                ms: 0.42,
                body: "fault_filter_abort".into()
            })
        );
        assert_eq!(
            Outcome::parse("fail ms=0.05 error=connect: Network is unreachable (os error 101)"),
            Some(Outcome::Failure {
                ms: 0.05,
                error: "connect: Network is unreachable (os error 101)".into()
            })
        );
        assert_eq!(Outcome::parse("listening"), None);
        assert_eq!(Outcome::parse("resp status=x ms=1 body=a"), None);
    }

    #[test]
    fn a_tally_counts_bodies_statuses_failures_and_latency_percentiles() {
        let out = "resp status=200 ms=1 body=a\nresp status=200 ms=2 body=b\nresp status=200 ms=3 body=a\n\
                   resp status=503 ms=4 body=x\nfail ms=5 error=boom\n";
        let t = Tally::from_output(out);
        assert_eq!(t.total(), 5);
        assert_eq!(t.ok(), 3);
        assert_eq!(t.status_count(503), 1);
        assert_eq!(t.failed(), 1);
        assert_eq!(t.share_pct("a"), 40.0);
        assert_eq!(t.percentile_ms(50.0), 3.0);
        assert_eq!(t.percentile_ms(100.0), 5.0);
        assert_eq!(Tally::default().percentile_ms(50.0), 0.0);
    }

    #[test]
    fn an_80_20_split_passes_within_tolerance_and_fails_outside_it() {
        let lines = |a: usize, b: usize| {
            let mut s = "resp status=200 ms=1 body=v1\n".repeat(a);
            s.push_str(&"resp status=200 ms=1 body=v2\n".repeat(b));
            Tally::from_output(&s)
        };
        let w = weights(&[("v1", 80), ("v2", 20)]);
        assert_eq!(check_split(&lines(160, 40), &w, 5.0), Ok(()));
        assert_eq!(check_split(&lines(152, 48), &w, 5.0), Ok(()));
        assert!(check_split(&lines(140, 60), &w, 5.0).is_err());
        assert!(check_split(&lines(200, 0), &w, 5.0).is_err());
        assert!(check_split(&Tally::default(), &w, 5.0).is_err());
    }

    #[test]
    fn a_split_with_errors_or_unknown_backends_fails() {
        let w = weights(&[("v1", 80), ("v2", 20)]);
        let with_503 = Tally::from_output(
            &("resp status=200 ms=1 body=v1\n".repeat(8)
                + "resp status=200 ms=1 body=v2\nresp status=503 ms=1 body=x\n"),
        );
        assert!(check_split(&with_503, &w, 5.0)
            .expect_err("must fail")
            .contains("did not get a 200"));
        let unknown = Tally::from_output(
            &("resp status=200 ms=1 body=v1\n".repeat(8)
                + "resp status=200 ms=1 body=v3\nresp status=200 ms=1 body=v2\n"),
        );
        assert!(check_split(&unknown, &w, 10.0)
            .expect_err("must fail")
            .contains("unexpected backend"));
    }

    #[test]
    fn bars_scale_with_the_percentage() {
        assert_eq!(bar(50.0, 10), "#####");
        assert_eq!(bar(0.0, 10), "");
        assert_eq!(bar(150.0, 4), "####");
    }
}
