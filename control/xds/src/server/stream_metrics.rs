//! Per-stream metric bookkeeping: the connected gauge, the quarantine gauge and ACK latency,
//! each undone or observed however the stream ends.

use std::collections::HashMap;
use std::time::Instant;

use crate::metrics::{Mode, ModeLabels, TypeLabels, XdsMetrics};

/// Decrements the connected gauge when a stream ends, however it ends.
pub(super) struct Connected(XdsMetrics, Mode);

impl Connected {
    pub(super) fn new(metrics: &XdsMetrics, mode: Mode) -> Self {
        metrics
            .connected_proxies
            .get_or_create(&ModeLabels { mode })
            .inc();
        Connected(metrics.clone(), mode)
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0
            .connected_proxies
            .get_or_create(&ModeLabels { mode: self.1 })
            .dec();
    }
}

/// Keeps `xds_quarantined_resources` in step with one stream's quarantines, and takes the
/// stream's share back when it ends, however it ends.
pub(super) struct QuarantineGauge {
    metrics: XdsMetrics,
    mode: Mode,
    /// type URL -> resources this stream has quarantined, as last added to the gauge.
    counts: HashMap<String, usize>,
}

impl QuarantineGauge {
    pub(super) fn new(metrics: &XdsMetrics, mode: Mode) -> Self {
        QuarantineGauge {
            metrics: metrics.clone(),
            mode,
            counts: HashMap::new(),
        }
    }

    pub(super) fn update<'a>(&mut self, counts: impl Iterator<Item = (&'a str, usize)>) {
        for (type_url, n) in counts {
            let prev = self.counts.get(type_url).copied().unwrap_or(0);
            if prev != n {
                let gauge = self
                    .metrics
                    .quarantined_resources
                    .get_or_create(&TypeLabels::new(self.mode, type_url));
                gauge.inc_by(n as i64 - prev as i64);
                self.counts.insert(type_url.to_string(), n);
            }
        }
    }
}

impl Drop for QuarantineGauge {
    fn drop(&mut self) {
        for (type_url, n) in &self.counts {
            self.metrics
                .quarantined_resources
                .get_or_create(&TypeLabels::new(self.mode, type_url))
                .dec_by(*n as i64);
        }
    }
}

/// Remembers when each response was queued, to measure ACK latency.
#[derive(Default)]
pub(super) struct AckTimer(HashMap<String, Instant>);

impl AckTimer {
    pub(super) fn sent(&mut self, nonce: &str) {
        if self.0.len() > 256 {
            self.0.clear();
        }
        self.0.insert(nonce.to_string(), Instant::now());
    }

    pub(super) fn acked(&mut self, metrics: &XdsMetrics, nonce: &str) {
        if let Some(at) = self.0.remove(nonce) {
            metrics.ack_latency.observe(at.elapsed().as_secs_f64());
        }
    }
}
