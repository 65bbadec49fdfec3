//! Test backend: answers each TCP connection (and UDP datagram) with the destination it was dialed
//! on and the peer it saw (`dst=.. src=..`). Runs in the backend netns, where whole service ranges
//! are local, so one listener on `[::]:<port>` answers every service address.
//!
//! Usage: `test-backend --tcp 9080,9443 [--udp 10.96.0.10:9053,[fd00:96::10]:9053]`
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};

use anyhow::Context;
use traffic_tests::wire::{unmap, BackendReply};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().context("flag without value")?;
        let items = value.split(',').filter(|s| !s.is_empty());
        match flag.as_str() {
            "--tcp" => tcp.extend(items.map(|p| p.parse::<u16>()).collect::<Result<Vec<_>, _>>()?),
            "--udp" => udp.extend(
                items
                    .map(|a| a.parse::<SocketAddr>())
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    for port in tcp {
        // Dual stack: v4 clients show up as ::ffff:a.b.c.d and are unmapped in the reply.
        let listener = TcpListener::bind(("::", port)).with_context(|| format!("bind [::]:{port}"))?;
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                std::thread::spawn(move || serve(conn));
            }
        });
    }
    for addr in udp {
        let sock = bind_udp_freebind(addr).with_context(|| format!("bind udp {addr}"))?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((_, peer)) = sock.recv_from(&mut buf) {
                let reply = BackendReply {
                    dst: addr,
                    src: unmap(peer),
                }
                .render();
                let _ = sock.send_to(reply.as_bytes(), peer);
            }
        });
    }
    println!("listening");
    loop {
        std::thread::park();
    }
}

/// IPv6 does not treat addresses of a `local` route as bindable (IPv4 does), so bind with IP_FREEBIND.
fn bind_udp_freebind(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
    use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&fd, sockopt::IpFreebind, &true)?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    // SAFETY: `fd` is a bound UDP socket we own; ownership moves into the UdpSocket.
    Ok(unsafe { UdpSocket::from_raw_fd(fd.into_raw_fd()) })
}

fn serve(conn: TcpStream) {
    let (Ok(local), Ok(peer)) = (conn.local_addr(), conn.peer_addr()) else {
        return;
    };
    let mut reader = BufReader::new(&conn);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let reply = BackendReply {
        dst: unmap(local),
        src: unmap(peer),
    }
    .render();
    let _ = (&conn).write_all(reply.as_bytes());
}
