//! The demo's tiny HTTP pieces (std only, HTTP/1.1, one request per connection).
//!
//! - `demo-http serve <ip:port> <body>`: answers every request with `200 OK` and `<body>\n`;
//!   prints `listening` once bound.
//! - `demo-http load <ip:port> <requests> <concurrency>`: `GET /` on a fresh connection per request
//!   (so every request goes through `connect()`), prints one line per request:
//!   `resp status=<code> ms=<latency> body=<first line>` or `fail ms=<latency> error=<message>`.
//!   Always exits 0 when it could run: the caller judges the results.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

const TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["serve", addr, body] => serve(addr.parse().context("address")?, body),
        ["load", addr, n, c] => load(
            addr.parse().context("address")?,
            n.parse().context("requests")?,
            c.parse().context("concurrency")?,
        ),
        _ => {
            anyhow::bail!("usage: demo-http serve <ip:port> <body> | load <ip:port> <requests> <concurrency>")
        }
    }
}

fn serve(addr: SocketAddr, body: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    println!("listening");
    let reply = Arc::new(format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}\n",
        body.len() + 1
    ));
    for conn in listener.incoming().map_while(Result::ok) {
        let reply = reply.clone();
        std::thread::spawn(move || {
            let _ = answer(conn, &reply);
        });
    }
    Ok(())
}

fn answer(conn: TcpStream, reply: &str) -> std::io::Result<()> {
    conn.set_read_timeout(Some(TIMEOUT))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    // Read the request head up to the empty line; the body (GET) is empty.
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    (&conn).write_all(reply.as_bytes())
}

fn load(addr: SocketAddr, requests: usize, concurrency: usize) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let lines = Arc::new(Mutex::new(Vec::with_capacity(requests)));
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (next, lines) = (next.clone(), lines.clone());
            std::thread::spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    let start = Instant::now();
                    let result = get(addr);
                    let ms = start.elapsed().as_secs_f64() * 1000.0;
                    let line = match result {
                        Ok((status, body)) => format!("resp status={status} ms={ms:.2} body={body}"),
                        Err(e) => format!("fail ms={ms:.2} error={e:#}"),
                    };
                    if let Ok(mut l) = lines.lock() {
                        l.push(line);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let mut out = std::io::stdout().lock();
    for line in lines.lock().map(|l| l.clone()).unwrap_or_default() {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// One `GET /`: the status code and the first line of the body.
fn get(addr: SocketAddr) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).context("connect")?;
    s.set_read_timeout(Some(TIMEOUT))?;
    write!(
        s,
        "GET / HTTP/1.1\r\nhost: {addr}\r\nuser-agent: demo-http\r\nconnection: close\r\n\r\n"
    )
    .context("send")?;
    let (head, body) = read_response(&mut s)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status code")?;
    let body = body.lines().next().unwrap_or("").trim().replace(' ', "_");
    Ok((status, body))
}

/// Reads one response: the head, then `content-length` bytes of body (to EOF without one). Not
/// waiting for EOF matters: after a local reply (fault abort) Envoy waits up to its delayed-close
/// timeout (1 s) for the client to close first.
fn read_response(s: &mut TcpStream) -> anyhow::Result<(String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut chunk).context("read")?;
        anyhow::ensure!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    let mut body = buf.split_off(head_end + 4);
    match length {
        Some(len) => {
            while body.len() < len {
                let n = s.read(&mut chunk).context("read body")?;
                anyhow::ensure!(n > 0, "connection closed mid-body");
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        }
        None => {
            s.read_to_end(&mut body).context("read body")?;
        }
    }
    Ok((head, String::from_utf8_lossy(&body).into_owned()))
}
