//! Plain HTTP/1.1 GETs from inside a pod's network namespace (Envoy's admin `/ready`).
//!
//! Each call runs on a fresh OS thread that enters the netns with `setns(2)`; only that thread
//! moves and it ends with the call, so no pooled thread is ever left in a pod's netns.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("open netns {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setns {path}: {source}")]
    Setns {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("GET http://{addr}{path}: {source}")]
    Io {
        addr: SocketAddr,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("GET http://{addr}{path}: malformed response {head:?}")]
    Malformed {
        addr: SocketAddr,
        path: String,
        head: String,
    },
    #[error("netns thread died")]
    Thread,
}

/// A response: status code and body (as text, chunked transfer decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Runs `f` on a new thread inside the network namespace at `netns` (e.g. `/proc/<pid>/ns/net`).
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, NetnsError> + Send + 'static,
) -> Result<T, NetnsError> {
    let file = File::open(netns).map_err(|source| NetnsError::Open {
        path: netns.to_path_buf(),
        source,
    })?;
    let path = netns.to_path_buf();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|source| NetnsError::Setns { path, source })?;
            f()
        })
        .map_err(|_| NetnsError::Thread)?
        .join()
        .map_err(|_| NetnsError::Thread)?
}

/// One probe of Envoy's admin `GET /ready` on `127.0.0.1:<admin_port>` inside `netns` (500 ms):
/// `Ok` when it answers `200 LIVE`, else what it did instead (for the not-ready error).
pub async fn envoy_ready(netns: PathBuf, admin_port: u16) -> Result<(), String> {
    let addr = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, admin_port));
    let probe =
        tokio::task::spawn_blocking(move || http_get(&netns, addr, "/ready", Duration::from_millis(500)))
            .await;
    match probe {
        Ok(Ok(r)) if r.status == 200 && r.body.trim() == "LIVE" => Ok(()),
        Ok(Ok(r)) => Err(format!("/ready answered {} {}", r.status, r.body.trim())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("probe task: {e}")),
    }
}

/// `GET <path>` on `addr` inside `netns`, connection and whole exchange bounded by `timeout`.
pub fn http_get(
    netns: &Path,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<Response, NetnsError> {
    let path = path.to_string();
    in_netns(netns, move || {
        let io = |source| NetnsError::Io {
            addr,
            path: path.clone(),
            source,
        };
        let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
        s.set_read_timeout(Some(timeout)).map_err(io)?;
        s.set_write_timeout(Some(timeout)).map_err(io)?;
        let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).map_err(io)?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).map_err(io)?;
        parse_response(&buf).ok_or_else(|| NetnsError::Malformed {
            addr,
            path: path.clone(),
            head: String::from_utf8_lossy(&buf[..buf.len().min(80)]).into_owned(),
        })
    })
}

/// Status and body of a raw HTTP/1.x response.
pub fn parse_response(raw: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status_line = head.lines().next()?;
    let mut parts = status_line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let chunked = head.lines().skip(1).any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding") && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked { dechunk(body)? } else { body.to_string() };
    Some(Response { status, body })
}

/// The payload of a chunked body (`<hex size>\r\n<data>\r\n … 0\r\n\r\n`).
fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size_line, after) = rest.split_once("\r\n")?;
        let size_hex = size_line.split(';').next()?.trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn a_response_yields_its_status_and_body() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nLIVE\n").unwrap();
        assert_eq!(
            r,
            Response {
                status: 200,
                body: "LIVE\n".into()
            }
        );
        let r = parse_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\nPRE_INITIALIZING\n").unwrap();
        assert_eq!(r.status, 503);
    }

    #[test]
    fn a_chunked_body_is_decoded() {
        let raw =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nLIVE\n\r\n3;x=y\r\nabc\r\n0\r\n\r\n";
        assert_eq!(parse_response(raw).unwrap().body, "LIVE\nabc");
        let truncated = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nLI";
        assert_eq!(parse_response(truncated), None);
    }

    #[test]
    fn garbage_is_not_a_response() {
        assert_eq!(parse_response(b""), None);
        assert_eq!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
        assert_eq!(parse_response(b"HTTP/1.1 abc\r\n\r\n"), None);
    }

    #[test]
    fn a_get_in_our_own_netns_reaches_a_local_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut chunk = [0u8; 256];
            while !req.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0, "request cut short");
                req.extend_from_slice(&chunk[..n]);
            }
            assert!(String::from_utf8_lossy(&req).starts_with("GET /ready HTTP/1.1\r\n"));
            s.write_all(b"HTTP/1.1 200 OK\r\n\r\nLIVE\n").unwrap();
        });
        let netns = PathBuf::from(format!("/proc/{}/ns/net", std::process::id()));
        if File::open(&netns).is_err() {
            return;
        }
        match http_get(&netns, addr, "/ready", Duration::from_secs(2)) {
            Ok(r) => assert_eq!(
                r,
                Response {
                    status: 200,
                    body: "LIVE\n".into()
                }
            ),
            // setns needs CAP_SYS_ADMIN even into our own netns (the server thread is left behind).
            Err(NetnsError::Setns { .. }) => return eprintln!("skip: setns not permitted"),
            Err(e) => panic!("{e}"),
        }
        server.join().unwrap();
    }
}
