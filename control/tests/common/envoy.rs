//! Real Envoy processes bootstrapped to an ADS server, plus the loopback backends, Zipkin
//! collector and HTTP client the data-path tests use.
//!
//! Envoy is `$ENVOY_BIN`, else `<repo>/.venv/bin/envoy` (installed by `cargo xtask setup`). When it
//! is missing the tests skip with a reason, except under `CI=true` where that is a failure.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Envoy's binary, or None (after printing why) when the test should be skipped.
pub fn envoy_binary() -> Option<PathBuf> {
    let path = match std::env::var_os("ENVOY_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/envoy"),
    };
    if path.is_file() {
        return Some(path);
    }
    let reason = format!(
        "Envoy not found at {} (set ENVOY_BIN or run `cargo xtask setup`)",
        path.display()
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{reason}");
    }
    eprintln!("SKIPPED: {reason}");
    None
}

/// A free TCP port on 127.0.0.1 (racy but good enough on a test machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "traffic-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).expect("mkdir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// ADS flavour of the bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ads {
    Sotw,
    Delta,
}

/// An Envoy process, killed (by pid) on drop.
pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    pub log: PathBuf,
    _dir: TempDir,
}

impl Envoy {
    pub fn bootstrap(node_id: &str, admin_port: u16, xds: SocketAddr, ads: Ads) -> String {
        let api_type = match ads {
            Ads::Sotw => "GRPC",
            Ads::Delta => "DELTA_GRPC",
        };
        format!(
            r#"node: {{id: "{node_id}", cluster: test}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: "{ip}", port_value: {port}}}}}}}}}]}}]
"#,
            ip = xds.ip(),
            port = xds.port()
        )
    }

    /// Starts Envoy as node `node_id` against the ADS server at `xds`.
    pub async fn start(bin: &Path, node_id: &str, xds: SocketAddr, ads: Ads) -> Envoy {
        Self::start_with(bin, |admin_port| Self::bootstrap(node_id, admin_port, xds, ads)).await
    }

    /// Starts Envoy with the bootstrap `bootstrap(admin port)` returns (YAML or JSON).
    ///
    /// The admin port is picked free and bound by Envoy a moment later, so another process may
    /// take it in between: an Envoy that exits because its admin port is in use is started again
    /// on another port (a start-up retry, not a retry of anything the test checks).
    pub async fn start_with(bin: &Path, bootstrap: impl Fn(u16) -> String) -> Envoy {
        for _ in 0..3 {
            match Self::try_start(bin, &bootstrap).await {
                Ok(envoy) => return envoy,
                Err(log) => {
                    let why = log.lines().filter(|l| l.contains("cannot bind"));
                    eprintln!(
                        "Envoy's admin port was taken; starting it again: {}",
                        why.collect::<Vec<_>>().join(" ")
                    );
                }
            }
        }
        panic!("Envoy's admin port was taken three times in a row");
    }

    /// Starts Envoy and waits until it is ready; `Err(log)` if it exited because its admin port
    /// was in use.
    async fn try_start(bin: &Path, bootstrap: &impl Fn(u16) -> String) -> Result<Envoy, String> {
        let dir = TempDir::new("envoy");
        let admin_port = free_port();
        let config = dir.0.join("bootstrap.yaml");
        std::fs::write(&config, bootstrap(admin_port)).expect("write bootstrap");
        let log = dir.0.join("envoy.log");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config)
            .args([
                "--disable-hot-restart",
                "--log-level",
                "info",
                "--concurrency",
                "2",
            ])
            .arg("--log-path")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn envoy");
        let mut envoy = Envoy {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                let log = envoy.log_text();
                if log.contains(&format!("cannot bind '127.0.0.1:{admin_port}'")) {
                    return Err(log);
                }
                panic!("Envoy exited ({status}) before it was ready; log:\n{log}");
            }
            // Bounded: whoever else holds the port may accept and never answer.
            let ready =
                tokio::time::timeout(Duration::from_secs(2), http_get(envoy.admin, "/ready", &[])).await;
            if let Ok(Ok(r)) = ready {
                if r.status == 200 {
                    return Ok(envoy);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("Envoy not ready in 20 s; log:\n{}", envoy.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn admin_get(&self, path: &str) -> String {
        http_get(self.admin, path, &[])
            .await
            .expect("admin request")
            .body_text()
    }

    /// A counter or gauge by exact name (0 when absent).
    pub async fn stat(&self, name: &str) -> u64 {
        let text = self
            .admin_get(&format!("/stats?filter=^{}$", regex_escape(name)))
            .await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(": "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// All stats whose name matches `filter` (a regex).
    pub async fn stats(&self, filter: &str) -> String {
        self.admin_get(&format!("/stats?filter={filter}")).await
    }

    /// Polls until `cond` holds on the config dump, or panics with the dump and the log.
    pub async fn wait_config(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut dump = String::new();
        while Instant::now() < deadline {
            dump = self.admin_get("/config_dump?include_eds").await;
            if cond(&dump) {
                return dump;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "timed out waiting for {what}; config dump:\n{dump}\nlog:\n{}",
            self.log_text()
        );
    }

    /// Polls until at least `n` listeners are active and none is warming: a listener the config
    /// dump already shows may still wait for its routes (RDS) or secrets (SDS) before it accepts
    /// connections.
    pub async fn wait_listeners_active(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let active = self.stat("listener_manager.total_listeners_active").await;
            let warming = self.stat("listener_manager.total_listeners_warming").await;
            if active >= n && warming == 0 {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{active} listeners active ({warming} warming), wanted {n}; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until `cond(stat value)` holds.
    pub async fn wait_stat(&self, name: &str, cond: impl Fn(u64) -> bool) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let v = self.stat(name).await;
            if cond(v) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "stat {name} = {v} did not reach the expected value; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if "\\.+*?()|[]{}^$".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .map(|c| {
            if c == '|' {
                "%7C".to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl Drop for Envoy {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on the pid of a child we spawned and have not reaped yet.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// An HTTP response as the tiny client sees it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    request(addr, "GET", path, headers, &[]).await
}

pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect(addr).await?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    parse_response(&buf)
        .ok_or_else(|| std::io::Error::other(format!("bad response: {:?}", String::from_utf8_lossy(&buf))))
}

fn parse_response(buf: &[u8]) -> Option<HttpResponse> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut body = buf[end + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Some(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap_or("0").trim(), 16).unwrap_or(0);
        if size == 0 || b.len() < nl + 2 + size {
            break;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + size]);
        b = &b[(nl + 4 + size).min(b.len())..];
    }
    out
}

/// A loopback HTTP backend answering with its name; can fail or be slow on demand.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    /// The next N requests get a 503.
    pub fail_next: Arc<AtomicU32>,
    /// Every response waits this long.
    pub delay_ms: Arc<AtomicU64>,
    pub hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Listens on `ip:port` (port 0: any).
    pub async fn start(name: &str, ip: IpAddr, port: u16) -> Backend {
        let listener = TcpListener::bind((ip, port)).await.expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let fail_next = Arc::new(AtomicU32::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let hits = Arc::new(AtomicU64::new(0));
        let (n, f, d, h) = (
            name.to_string(),
            fail_next.clone(),
            delay_ms.clone(),
            hits.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve_backend_conn(
                    conn,
                    n.clone(),
                    f.clone(),
                    d.clone(),
                    h.clone(),
                ));
            }
        });
        Backend {
            name: name.to_string(),
            addr,
            fail_next,
            delay_ms,
            hits,
            task,
        }
    }
}

async fn serve_backend_conn(
    mut conn: TcpStream,
    name: String,
    fail_next: Arc<AtomicU32>,
    delay_ms: Arc<AtomicU64>,
    hits: Arc<AtomicU64>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        hits.fetch_add(1, Ordering::SeqCst);
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        let delay = delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let failing = fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let (status, mut body) = if failing {
            ("503 Service Unavailable", format!("{name} failing"))
        } else {
            ("200 OK", name.clone())
        };
        if let Some(size) = path.split("size=").nth(1).and_then(|s| s.parse::<usize>().ok()) {
            body = "x".repeat(size);
        }
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if conn.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A Zipkin collector: counts POSTs to /api/v2/spans and the spans in them.
pub struct Zipkin {
    pub addr: SocketAddr,
    pub posts: Arc<AtomicU64>,
    pub spans: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Zipkin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Zipkin {
    pub async fn start() -> Zipkin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind zipkin");
        let addr = listener.local_addr().expect("addr");
        let posts = Arc::new(AtomicU64::new(0));
        let spans = Arc::new(AtomicU64::new(0));
        let (p, s) = (posts.clone(), spans.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve_zipkin_conn(conn, p.clone(), s.clone()));
            }
        });
        Zipkin {
            addr,
            posts,
            spans,
            task,
        }
    }
}

async fn serve_zipkin_conn(mut conn: TcpStream, posts: Arc<AtomicU64>, spans: Arc<AtomicU64>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let chunked = head.contains("transfer-encoding: chunked");
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        let body_end = loop {
            let rest = &buf[end + 4..];
            if chunked {
                if let Some(p) = rest.windows(5).position(|w| w == b"0\r\n\r\n") {
                    if p == 0 || rest[..p].ends_with(b"\r\n") {
                        break end + 4 + p + 5;
                    }
                }
            } else if rest.len() >= len {
                break end + 4 + len;
            }
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let raw = &buf[end + 4..body_end];
        let body = if chunked {
            String::from_utf8_lossy(&dechunk(raw)).into_owned()
        } else {
            String::from_utf8_lossy(raw).into_owned()
        };
        buf.drain(..body_end);
        if std::env::var_os("ZIPKIN_DEBUG").is_some() {
            eprintln!("zipkin got: {head}\n{body}");
        }
        if head.starts_with("post /api/v2/spans") {
            posts.fetch_add(1, Ordering::SeqCst);
            spans.fetch_add(body.matches("\"traceId\"").count() as u64, Ordering::SeqCst);
        }
        if conn
            .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    }
}
