//! Helpers for tests that run a real Envoy: find the binary, free ports, tiny HTTP backends,
//! start Envoy on a static bootstrap and wait until it is ready, plain HTTP/1.1 requests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use prost::Message;

pub fn envoy_or_skip() -> Option<PathBuf> {
    let found = std::env::var_os("ENVOY_BIN").map(PathBuf::from).or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join("envoy"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true but no Envoy: set ENVOY_BIN"
        );
        eprintln!("skipping: no Envoy binary (set ENVOY_BIN or put envoy on PATH)");
    }
    found
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tiny HTTP/1.1 server answering every request with `hello from <ip>` and closing.
pub fn backend(ip: &str, port: u16) {
    let listener = TcpListener::bind((ip, port)).unwrap();
    let me = ip.to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let me = me.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                // `GET /big` answers 200 KB (for the rate limit), anything else a short greeting.
                let body = if req.starts_with(b"GET /big ") {
                    "x".repeat(200 * 1024)
                } else {
                    format!("hello from {me}")
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
}

pub struct Envoy {
    child: Child,
    _dir: TempDir,
}
impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
pub struct TempDir(pub PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Response status line + headers + body, or `None` if the connection was closed without one.
pub fn http_get(addr: SocketAddr, path: &str, headers: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: test\r\n{headers}connection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    (!out.is_empty()).then_some(out)
}

pub fn status(resp: &str) -> u16 {
    resp.split_whitespace().nth(1).unwrap().parse().unwrap()
}

pub fn body(resp: &str) -> &str {
    resp.split("\r\n\r\n").nth(1).unwrap_or("")
}

/// Start Envoy on `bootstrap` and wait until its admin interface on `admin_port` says ready.
pub fn start_envoy(envoy_bin: &PathBuf, bootstrap: &Bootstrap, admin_port: u16) -> Envoy {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        TempDir(std::env::temp_dir().join(format!("translate-envoy-live-{}-{seq}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let cfg = dir.0.join("bootstrap.pb");
    std::fs::write(&cfg, bootstrap.encode_to_vec()).unwrap();
    let child = Command::new(envoy_bin)
        .args(["--log-level", "warn", "--base-id-path"])
        .arg(dir.0.join("base-id"))
        .arg("--use-dynamic-base-id")
        .arg("-c")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let envoy = Envoy { child, _dir: dir };
    let admin_addr: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(admin_addr, "/ready", "").map(|r| status(&r)) != Some(200) {
        assert!(Instant::now() < deadline, "envoy not ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    envoy
}

/// A fake Zipkin collector on 127.0.0.1: keeps the JSON bodies POSTed to it.
pub fn zipkin_collector() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = bodies.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let keep = keep.clone();
            std::thread::spawn(move || loop {
                // Envoy keeps the connection open: read one request at a time.
                let mut buf = Vec::new();
                let mut byte = [0u8; 1];
                while !buf.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut byte) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => buf.push(byte[0]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                let len: Option<usize> = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap_or(0));
                let body = match len {
                    Some(len) => {
                        let mut body = vec![0u8; len];
                        if conn.read_exact(&mut body).is_err() {
                            return;
                        }
                        body
                    }
                    None => match read_chunked(&mut conn) {
                        Some(b) => b,
                        None => return,
                    },
                };
                keep.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
                if conn
                    .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                    .is_err()
                {
                    return;
                }
            });
        }
    });
    (port, bodies)
}

fn read_line(conn: &mut TcpStream) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match conn.read(&mut byte) {
            Ok(0) | Err(_) => return None,
            Ok(_) => line.push(byte[0]),
        }
    }
    Some(String::from_utf8_lossy(&line[..line.len() - 2]).into_owned())
}

/// A `transfer-encoding: chunked` body.
fn read_chunked(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let size = usize::from_str_radix(read_line(conn)?.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            read_line(conn)?;
            return Some(body);
        }
        let mut chunk = vec![0u8; size + 2];
        conn.read_exact(&mut chunk).ok()?;
        body.extend_from_slice(&chunk[..size]);
    }
}

/// A backend on `ip:port` answering `hello from <ip>`; `answer(n, path)` (n = 0-based request
/// count) gives the status and a delay before answering.
pub fn scripted_backend(ip: &str, port: u16, answer: fn(usize, &str) -> (u16, Duration)) -> Arc<AtomicUsize> {
    scripted_backend_conns(ip, port, answer).0
}

/// [`scripted_backend`], also counting the connections it accepted.
pub fn scripted_backend_conns(
    ip: &str,
    port: u16,
    answer: fn(usize, &str) -> (u16, Duration),
) -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((ip, port)).unwrap();
    let me = ip.to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let conns = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let accepted = conns.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            accepted.fetch_add(1, Ordering::SeqCst);
            let me = me.clone();
            let seen = seen.clone();
            std::thread::spawn(move || loop {
                let mut buf = [0u8; 4096];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req).to_string();
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let (status, delay) = answer(n, &path);
                std::thread::sleep(delay);
                let body = format!("hello from {me}");
                // One write: `write!` would send pieces, and Nagle + delayed ACKs cost 40 ms each.
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if conn.write_all(resp.as_bytes()).is_err() {
                    return;
                }
            });
        }
    });
    (count, conns)
}

pub fn ok(_: usize, _: &str) -> (u16, Duration) {
    (200, Duration::ZERO)
}
