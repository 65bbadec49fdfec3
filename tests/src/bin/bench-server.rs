//! Servers for the redirect benchmark (`cargo xtask bench redirect`), built so that they cost as
//! little CPU per connection as possible and the benchmark measures the datapath instead:
//! a fixed pool of worker threads per listener, each blocking in `accept()` on the shared socket
//! (the kernel wakes one), one connection at a time per worker, stack buffers, no per-connection
//! thread, allocation or logging. `test-proxy` stays the proxy of the functional suites.
//!
//! - `bench-server proxy <port> <workers> upstream [<fallback>]`: like Envoy's outbound listener:
//!   per connection `getsockopt(SO_ORIGINAL_DST)`, read the request, dial the original destination
//!   (or `<fallback>` when nothing redirected the connection: the benchmark's no-redirect limit),
//!   forward the request, relay the reply, close.
//! - `bench-server proxy <port> <workers> local [<fallback>]`: the same up to reading the original
//!   destination and the request, then answers `dst=<original destination>` itself (no upstream hop:
//!   the redirect is a larger share of the per-connection cost).
//! - `bench-server backend <port> <workers>`: dual-stack listener answering `dst=<local address>`.
//!
//! Prints `listening` once the listener is bound, then serves until killed. A failed connection
//! is closed without a reply, which the benchmark client counts as an error.
use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};

use anyhow::{bail, Context};
use nix::sys::socket::{self, sockopt};

/// The request and reply are one short line each.
const BUF: usize = 256;

#[derive(Clone, Copy)]
enum Mode {
    Upstream,
    Local,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bench-server proxy <port> <workers> upstream|local [<fallback>] \
                 | bench-server backend <port> <workers>";
    let (role, rest) = args.split_first().context(usage)?;
    let port: u16 = rest.first().context(usage)?.parse().context("bad port")?;
    let workers: usize = rest.get(1).context(usage)?.parse().context("bad workers")?;
    anyhow::ensure!(workers > 0, "workers must be at least 1");
    match role.as_str() {
        "proxy" => {
            let mode = match rest.get(2).map(String::as_str) {
                Some("upstream") => Mode::Upstream,
                Some("local") => Mode::Local,
                _ => bail!(usage),
            };
            let fallback: Option<SocketAddr> = match rest.get(3) {
                Some(a) => Some(a.parse().context("bad fallback address")?),
                None => None,
            };
            // IPv4 only: the benchmark's client dials an IPv4 service.
            let listener = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("bind :{port}"))?;
            spawn_workers(listener, workers, move |c| proxy(c, mode, fallback))?;
        }
        "backend" => {
            let listener = TcpListener::bind(("::", port)).with_context(|| format!("bind [::]:{port}"))?;
            spawn_workers(listener, workers, backend)?;
        }
        other => bail!("unknown role {other}; {usage}"),
    }
    println!("listening");
    std::io::stdout().flush()?;
    loop {
        std::thread::park();
    }
}

fn spawn_workers(
    listener: TcpListener,
    workers: usize,
    serve: impl Fn(TcpStream) -> std::io::Result<()> + Send + Clone + 'static,
) -> anyhow::Result<()> {
    for _ in 0..workers {
        let listener = listener.try_clone()?;
        let serve = serve.clone();
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || loop {
                if let Ok((conn, _)) = listener.accept() {
                    // Dropping the connection closes it: the client sees no reply.
                    let _ = serve(conn);
                }
            })?;
    }
    Ok(())
}

/// Reads until the first newline (the request line); returns the bytes read.
fn read_line(conn: &mut TcpStream, buf: &mut [u8; BUF]) -> std::io::Result<usize> {
    let mut n = 0;
    loop {
        let got = conn.read(&mut buf[n..])?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        n += got;
        if buf[..n].contains(&b'\n') || n == BUF {
            return Ok(n);
        }
    }
}

/// Reads until EOF; returns the bytes read (at most `BUF`, the rest is discarded).
fn read_to_eof(conn: &mut TcpStream, buf: &mut [u8; BUF]) -> std::io::Result<usize> {
    let mut n = 0;
    loop {
        let got = if n < BUF {
            conn.read(&mut buf[n..])?
        } else {
            conn.read(&mut [0u8; 64])?
        };
        if got == 0 {
            return Ok(n);
        }
        n = (n + got).min(BUF);
    }
}

fn original_dst(conn: &TcpStream) -> Option<SocketAddr> {
    let a = socket::getsockopt(conn, sockopt::OriginalDst).ok()?;
    let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
    Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
}

fn proxy(mut client: TcpStream, mode: Mode, fallback: Option<SocketAddr>) -> std::io::Result<()> {
    let orig = original_dst(&client)
        .or(fallback)
        .ok_or(std::io::ErrorKind::NotFound)?;
    let mut buf = [0u8; BUF];
    let n = read_line(&mut client, &mut buf)?;
    match mode {
        Mode::Local => {
            let mut reply = [0u8; 64];
            let len = {
                let mut w = &mut reply[..];
                writeln!(w, "dst={orig}")?;
                64 - w.len()
            };
            client.write_all(&reply[..len])
        }
        Mode::Upstream => {
            let mut upstream = TcpStream::connect(orig)?;
            upstream.write_all(&buf[..n])?;
            let n = read_to_eof(&mut upstream, &mut buf)?;
            client.write_all(&buf[..n])
        }
    }
}

fn backend(mut conn: TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; BUF];
    read_line(&mut conn, &mut buf)?;
    let local = conn.local_addr()?;
    let mut reply = [0u8; 96];
    let len = {
        let mut w = &mut reply[..];
        writeln!(w, "dst={local}")?;
        96 - w.len()
    };
    conn.write_all(&reply[..len])
}
