//! Test client, run as an app of a pod.
//!
//! - `test-client tcp <dst>...`: opens one connection per destination, all at once (every connection is
//!   established before any request is sent), sends a line, reads the backend's reply, prints one
//!   `ok dst=.. local=.. reply_dst=.. reply_src=..` line each; exits 1 if any connection failed or any
//!   reply names another destination than the one dialed.
//! - `test-client udp <dst>...`: the same over connected UDP sockets.
//! - `test-client bench <dst> <duration_ms> <concurrency>`: short-lived connections (connect, request,
//!   reply, close) in a loop; prints `bench conns=.. errors=.. p50_us=.. p99_us=..`.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::Context;
use traffic_tests::wire::{unmap, BackendReply, ClientResult};

const TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = args
        .split_first()
        .context("usage: test-client tcp|udp|bench ...")?;
    match cmd.as_str() {
        "tcp" => many(rest, tcp_once),
        "udp" => many(rest, |dst, _| udp_once(dst)),
        "bench" => bench(rest),
        other => anyhow::bail!("unknown command {other}"),
    }
}

fn parse_dsts(args: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    args.iter()
        .map(|a| a.parse().with_context(|| format!("bad address {a}")))
        .collect()
}

fn many(
    args: &[String],
    once: fn(SocketAddr, &Barrier) -> anyhow::Result<ClientResult>,
) -> anyhow::Result<()> {
    let dsts = parse_dsts(args)?;
    let barrier = Arc::new(Barrier::new(dsts.len()));
    let threads: Vec<_> = dsts
        .iter()
        .map(|&dst| {
            let barrier = barrier.clone();
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || once(dst, &barrier))
        })
        .collect::<Result<_, _>>()?;
    let mut failed = 0;
    let mut out = std::io::stdout().lock();
    for (dst, t) in dsts.iter().zip(threads) {
        match t
            .join()
            .map_err(|_| anyhow::anyhow!("thread panicked"))
            .and_then(|r| r)
        {
            Ok(res) if res.reply.dst == unmap(res.dst) => writeln!(out, "{}", res.render())?,
            Ok(res) => {
                failed += 1;
                writeln!(out, "err dst={dst} wrong reply {:?}", res.reply)?;
            }
            Err(e) => {
                failed += 1;
                writeln!(out, "err dst={dst} {e:#}")?;
            }
        }
    }
    out.flush()?;
    anyhow::ensure!(failed == 0, "{failed} of {} failed", dsts.len());
    Ok(())
}

fn tcp_once(dst: SocketAddr, barrier: &Barrier) -> anyhow::Result<ClientResult> {
    let conn = TcpStream::connect_timeout(&dst, TIMEOUT);
    // Everyone waits here, so all connections are open at the same time (also the failed ones wait).
    barrier.wait();
    let mut conn = conn.with_context(|| format!("connect {dst}"))?;
    conn.set_read_timeout(Some(TIMEOUT))?;
    let local = conn.local_addr()?;
    // v4-mapped destinations name the IPv4 address, which is what the proxy and backend see.
    conn.write_all(format!("hello {}\n", unmap(dst)).as_bytes())?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)
        .with_context(|| format!("read from {dst}"))?;
    let reply = BackendReply::parse(&reply).with_context(|| format!("bad reply {reply:?} from {dst}"))?;
    Ok(ClientResult { dst, local, reply })
}

fn udp_once(dst: SocketAddr) -> anyhow::Result<ClientResult> {
    let bind: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = UdpSocket::bind(bind)?;
    sock.connect(dst)?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let local = sock.local_addr()?;
    let mut buf = [0u8; 1500];
    // A few tries: the first datagram may race neighbour discovery.
    for _ in 0..3 {
        sock.send(b"hello\n")?;
        if let Ok(n) = sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            let reply = BackendReply::parse(&text).with_context(|| format!("bad reply {text:?}"))?;
            return Ok(ClientResult { dst, local, reply });
        }
    }
    anyhow::bail!("no udp reply from {dst}")
}

fn bench(args: &[String]) -> anyhow::Result<()> {
    let [dst, duration_ms, concurrency] = args else {
        anyhow::bail!("usage: test-client bench <dst> <duration_ms> <concurrency>")
    };
    let dst: SocketAddr = dst.parse()?;
    let duration = Duration::from_millis(duration_ms.parse()?);
    let concurrency: usize = concurrency.parse()?;
    let start = Barrier::new(concurrency + 1);
    let (all, errors, secs) = std::thread::scope(|s| -> anyhow::Result<_> {
        let threads: Vec<_> = (0..concurrency)
            .map(|_| {
                let start = &start;
                s.spawn(move || {
                    // Sized for ~20k conn/s per thread for the whole run: no reallocation while timing.
                    let mut lat = Vec::with_capacity(20_000 * duration.as_secs().max(1) as usize);
                    let mut buf = [0u8; 256];
                    let mut errors = 0u64;
                    start.wait();
                    let end = Instant::now() + duration;
                    loop {
                        let t0 = Instant::now();
                        if t0 >= end {
                            break;
                        }
                        match one_request(dst, &mut buf) {
                            Ok(()) => lat.push(t0.elapsed().as_micros() as u32),
                            Err(_) => errors += 1,
                        }
                    }
                    (lat, errors)
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        let mut all = Vec::new();
        let mut errors = 0;
        for t in threads {
            let (lat, e) = t.join().map_err(|_| anyhow::anyhow!("bench thread panicked"))?;
            all.extend(lat);
            errors += e;
        }
        Ok((all, errors, t0.elapsed().as_secs_f64()))
    })?;
    let mut all = all;
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
    };
    println!(
        "bench conns={} errors={errors} secs={secs:.3} p50_us={} p99_us={}",
        all.len(),
        pct(0.50).unwrap_or(0),
        pct(0.99).unwrap_or(0)
    );
    Ok(())
}

/// One short-lived connection: connect, one request line, the whole reply, close. Blocking calls
/// only (no connect timeout: that costs a poll and two fcntl per connection); the read timeout
/// keeps a stuck connection from hanging the run.
fn one_request(dst: SocketAddr, buf: &mut [u8; 256]) -> anyhow::Result<()> {
    let mut conn = TcpStream::connect(dst)?;
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.write_all(b"hello\n")?;
    let mut n = 0;
    loop {
        let got = conn.read(&mut buf[n..])?;
        if got == 0 {
            break;
        }
        n += got;
        anyhow::ensure!(n < buf.len(), "reply too long");
    }
    anyhow::ensure!(buf[..n].starts_with(b"dst="), "bad reply");
    Ok(())
}
