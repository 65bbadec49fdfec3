//! Sustained HTTP load from inside a pod, for the fault scenarios of the e2e suite.
//!
//! `load-client <ip:port> <requests per second> <seconds>`: starts one `GET /` (HTTP/1.1, a new
//! TCP connection each, so every request goes through the pod's redirect) every `1/rps` seconds
//! on a pool of threads, for `seconds`, and prints one JSON line: how many requests were sent and
//! how each ended (`ok` = a `200` reply, `refused`, `reset`, `timeout`, `http_error`, `other`), the
//! time of the first and last failure (ms since start) and the p50/p99/max latency of the
//! successful ones. Requests still running 15 s after the last one was due are reported as
//! `unfinished` (an overloaded machine, not a failure of the path). Exits 0 whatever the outcome
//! (the test judges it).
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;

const TIMEOUT: Duration = Duration::from_secs(5);
const WORKERS: usize = 64;
/// How long after the last request was due the summary waits for stragglers.
const GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Refused,
    Reset,
    Timeout,
    HttpError,
    Other,
}

fn classify(e: &std::io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::ConnectionRefused => Outcome::Refused,
        ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe
        | ErrorKind::UnexpectedEof => Outcome::Reset,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::Timeout,
        _ => Outcome::Other,
    }
}

fn get(dst: SocketAddr) -> Outcome {
    let run = || -> std::io::Result<Outcome> {
        let mut s = TcpStream::connect_timeout(&dst, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.set_write_timeout(Some(TIMEOUT))?;
        // HTTP/1.1 with `connection: close` (Envoy refuses HTTP/1.0 by default): the reply ends
        // with the connection, so reading to EOF reads exactly one reply.
        s.write_all(format!("GET / HTTP/1.1\r\nHost: {dst}\r\nConnection: close\r\n\r\n").as_bytes())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        if buf.is_empty() {
            return Ok(Outcome::Reset);
        }
        let head = String::from_utf8_lossy(&buf[..buf.len().min(16)]).into_owned();
        Ok(
            if head.starts_with("HTTP/1.") && head.split(' ').nth(1) == Some("200") {
                Outcome::Ok
            } else {
                Outcome::HttpError
            },
        )
    };
    run().unwrap_or_else(|e| classify(&e))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dst, rps, seconds] = args.as_slice() else {
        anyhow::bail!("usage: load-client <ip:port> <requests per second> <seconds>");
    };
    let dst: SocketAddr = dst.parse().with_context(|| format!("bad address {dst}"))?;
    let rps: u32 = rps.parse().context("requests per second")?;
    let seconds: u64 = seconds.parse().context("seconds")?;
    anyhow::ensure!(rps > 0, "requests per second must be > 0");
    let (job_tx, job_rx) = mpsc::channel::<Instant>();
    let job_rx = std::sync::Arc::new(std::sync::Mutex::new(job_rx));
    let (res_tx, res_rx) = mpsc::channel::<(Instant, Outcome, Duration)>();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let rx = job_rx.clone();
            let tx = res_tx.clone();
            std::thread::spawn(move || loop {
                let job = rx.lock().map_err(|_| ()).and_then(|r| r.recv().map_err(|_| ()));
                let Ok(at) = job else { return };
                let t = Instant::now();
                let o = get(dst);
                if tx.send((at, o, t.elapsed())).is_err() {
                    return;
                }
            })
        })
        .collect();
    drop(res_tx);
    let start = Instant::now();
    let every = Duration::from_secs(1) / rps;
    let total = u64::from(rps) * seconds;
    for i in 0..total {
        let due = start + every * u32::try_from(i).unwrap_or(u32::MAX);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        job_tx.send(Instant::now()).context("workers gone")?;
    }
    drop(job_tx);
    let deadline = Instant::now() + GRACE;
    let mut counts = std::collections::BTreeMap::<&str, u64>::new();
    let mut latencies = Vec::new();
    let (mut first_fail, mut last_fail) = (None::<u128>, None::<u128>);
    let mut received = 0u64;
    while received < total {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        let Ok((at, o, took)) = res_rx.recv_timeout(left) else {
            break;
        };
        received += 1;
        let name = match o {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Reset => "reset",
            Outcome::Timeout => "timeout",
            Outcome::HttpError => "http_error",
            Outcome::Other => "other",
        };
        *counts.entry(name).or_default() += 1;
        if o == Outcome::Ok {
            latencies.push(took.as_micros());
        } else {
            let ms = at.duration_since(start).as_millis();
            first_fail = Some(first_fail.map_or(ms, |f| f.min(ms)));
            last_fail = Some(last_fail.map_or(ms, |l| l.max(ms)));
        }
    }
    if received < total {
        counts.insert("unfinished", total - received);
    }
    // Workers still busy with stragglers end with the process.
    drop(workers);
    latencies.sort_unstable();
    let pct = |p: usize| {
        latencies
            .get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1)))
            .copied()
    };
    let out = serde_json::json!({
        "sent": total,
        "elapsed_ms": start.elapsed().as_millis() as u64,
        "outcomes": counts,
        "first_failure_ms": first_fail.map(|v| v as u64),
        "last_failure_ms": last_fail.map(|v| v as u64),
        "p50_us": pct(50).map(|v| v as u64),
        "p99_us": pct(99).map(|v| v as u64),
        "max_us": latencies.last().map(|v| *v as u64),
    });
    println!("{out}");
    Ok(())
}
