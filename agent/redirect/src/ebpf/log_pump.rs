//! Forwards the programs' aya-log messages to `tracing` on a small thread.
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use aya::Ebpf;

/// Forwards aya-log records from the programs to `tracing` on a small thread.
pub(super) struct LogPump {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LogPump {
    pub(super) fn start(ebpf: &mut Ebpf) -> Option<Self> {
        let mut logger = match aya_log::EbpfLogger::init_with_logger(ebpf, TracingLog) {
            Ok(l) => l,
            Err(error) => {
                tracing::warn!(%error, "eBPF logs will not be forwarded");
                return None;
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ebpf-log".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let mut pfd = libc::pollfd {
                        fd: logger.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd; the result only decides when to flush.
                    let _ = unsafe { libc::poll(&mut pfd, 1, 200) };
                    logger.flush();
                }
            })
            .ok()?;
        Some(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LogPump {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args().to_string();
        match record.level() {
            log::Level::Error => tracing::error!(target: "traffic_ebpf", "{msg}"),
            log::Level::Warn => tracing::warn!(target: "traffic_ebpf", "{msg}"),
            log::Level::Info => tracing::info!(target: "traffic_ebpf", "{msg}"),
            _ => tracing::debug!(target: "traffic_ebpf", "{msg}"),
        }
    }
    fn flush(&self) {}
}
