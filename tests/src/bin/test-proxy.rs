//! Test proxy: a minimal transparent proxy like Envoy's outbound listener. Accepts on `<port>` (v4 and
//! v6), asks the kernel for the original destination (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`,
//! answered by conntrack in iptables mode and by the cgroup/getsockopt program in eBPF mode), prints
//! `orig=<dst> peer=<client>` (or `error=.. peer=..`), dials the original destination and relays bytes.
//!
//! Usage: `test-proxy <port> [--fallback <addr>]`. With `--fallback`, a connection whose original
//! destination is unknown (nothing redirected it: a client dialed the proxy itself) is relayed there;
//! the redirect benchmark uses that for its "no redirect" baseline.
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::time::Duration;

use anyhow::Context;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn6};
use traffic_tests::wire::{unmap, ProxyEvent, ProxyLine};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port: u16 = args
        .first()
        .context("usage: test-proxy <port> [--fallback <addr>]")?
        .parse()?;
    if let [_, flag, addr] = args.as_slice() {
        anyhow::ensure!(flag == "--fallback", "unknown flag {flag}");
        let _ = FALLBACK.set(addr.parse().context("bad --fallback address")?);
    }
    let v4 = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("bind 0.0.0.0:{port}"))?;
    let v6 = listen_v6_only(port)?;
    for listener in [v4, v6] {
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let _ = std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || handle(conn));
            }
        });
    }
    println!("listening");
    loop {
        std::thread::park();
    }
}

/// Where to relay connections that were not redirected (`--fallback`).
static FALLBACK: std::sync::OnceLock<SocketAddr> = std::sync::OnceLock::new();

fn listen_v6_only(port: u16) -> anyhow::Result<TcpListener> {
    let fd = socket::socket(
        AddressFamily::Inet6,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    let addr = SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
    socket::bind(fd.as_raw_fd(), &addr).with_context(|| format!("bind [::]:{port}"))?;
    socket::listen(&fd, socket::Backlog::MAXCONN)?;
    // SAFETY: `fd` is a listening TCP socket we own; ownership moves into the TcpListener.
    Ok(unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) })
}

fn original_dst(conn: &TcpStream) -> nix::Result<SocketAddr> {
    match conn.local_addr() {
        Ok(SocketAddr::V6(_)) => {
            let a = socket::getsockopt(conn, sockopt::Ip6tOriginalDst)?;
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Ok(unmap(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                0,
                0,
            ))))
        }
        _ => {
            let a = socket::getsockopt(conn, sockopt::OriginalDst)?;
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Ok(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
        }
    }
}

fn log(ev: &ProxyEvent) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", ev.render());
    let _ = out.flush();
}

fn handle(client: TcpStream) {
    let Ok(peer) = client.peer_addr().map(unmap) else {
        return;
    };
    let orig = match (original_dst(&client), FALLBACK.get()) {
        (Ok(orig), _) => orig,
        (Err(_), Some(fallback)) => *fallback,
        (Err(e), None) => {
            return log(&ProxyEvent::Failed {
                error: format!("getsockopt: {e}"),
                peer,
            })
        }
    };
    // The first line is the request; it names what the client dialed (forwarded unchanged).
    let Ok(c_read) = client.try_clone() else { return };
    let mut c_read = BufReader::new(c_read);
    let mut request = String::new();
    if c_read.read_line(&mut request).is_err() {
        return;
    }
    let req = request.split_whitespace().nth(1).unwrap_or_default().to_string();
    let line = ProxyLine {
        event: ProxyEvent::Learned { orig, peer },
        req,
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.render());
    let _ = out.flush();
    drop(out);
    let upstream = match TcpStream::connect_timeout(&orig, Duration::from_secs(5)) {
        Ok(u) => u,
        Err(e) => {
            return log(&ProxyEvent::Failed {
                error: format!("dial {orig}: {e}"),
                peer,
            })
        }
    };
    let Ok(mut u_write) = upstream.try_clone() else {
        return;
    };
    if u_write.write_all(request.as_bytes()).is_err() {
        return;
    }
    let up = std::thread::Builder::new().stack_size(128 * 1024).spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut u_write);
        let _ = u_write.shutdown(Shutdown::Write);
    });
    let (mut u_read, mut c_write) = (upstream, client);
    let _ = std::io::copy(&mut u_read, &mut c_write);
    let _ = c_write.shutdown(Shutdown::Write);
    if let Ok(up) = up {
        let _ = up.join();
    }
}
