//! `--auth`: the server authenticates every stream as in production (TLS with a certificate from
//! a CA given in `--xds-ca-dir`, a bearer token per stream reviewed through the Kubernetes
//! TokenReview API and cached, the node id bound to the token's pod), and the clients present a
//! token over TLS. The API server is a stand-in in this process: a plain-HTTP endpoint answering
//! `POST /apis/authentication.k8s.io/v1/tokenreviews`, which the server reaches through a
//! kubeconfig like any API server, so the server runs its real `KubeTokenReviewer` and cache.
//! Token `bench-<i>` is pod `default/bench<i>` (service account `bench`), the node id of client
//! `i`. The peer-address check is off (`--xds-auth-peer-check=false`): the clients all connect
//! from 127.0.0.1, and the synthetic model has no pods for them.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The name the server's certificate is issued for and the clients verify.
pub const SERVER_NAME: &str = "localhost";

/// TokenReviews the stand-in API server answered.
pub static REVIEWS: AtomicU64 = AtomicU64::new(0);

/// The token client `id` presents.
pub fn token(id: usize) -> String {
    format!("bench-{id}")
}

/// What the clients need to dial an authenticating server.
#[derive(Clone)]
pub struct Dial {
    pub tls: tonic::transport::ClientTlsConfig,
}

/// Files and the stand-in API server for a run with `--auth`.
pub struct Setup {
    pub dial: Dial,
    /// The server's extra arguments and environment.
    pub args: Vec<String>,
    pub kubeconfig: PathBuf,
}

/// Writes the CA (`dir/ca/ca.{crt,key}`) and a kubeconfig for the stand-in API server, which it
/// starts on loopback.
pub async fn setup(dir: &Path) -> anyhow::Result<Setup> {
    let ca = traffic_control::xds_tls::Ca::generate().context("CA")?;
    let ca_dir = dir.join("ca");
    std::fs::create_dir_all(&ca_dir)?;
    std::fs::write(ca_dir.join(traffic_control::xds_tls::CA_CERT_KEY), &ca.cert_pem)?;
    std::fs::write(ca_dir.join(traffic_control::xds_tls::CA_KEY_KEY), &ca.key_pem)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let api = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Err(e) = serve_connection(conn).await {
                    eprintln!("stand-in API server: {e:#}");
                }
            });
        }
    });
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster: {{server: \"http://{api}\"}}\n\
             users:\n- name: bench\n  user: {{}}\ncontexts:\n- name: bench\n  context: {{cluster: bench, user: bench}}\n\
             current-context: bench\n"
        ),
    )?;
    let args = [
        "--xds-auth=true",
        "--xds-auth-peer-check=false",
        "--xds-tls=true",
        "--xds-tls-names",
        SERVER_NAME,
        "--xds-ca-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([ca_dir.display().to_string()])
    .collect();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.cert_pem))
        .domain_name(SERVER_NAME);
    Ok(Setup {
        dial: Dial { tls },
        args,
        kubeconfig,
    })
}

/// HTTP/1.1 with keep-alive, requests with a `content-length` body (what the kube client sends).
async fn serve_connection(mut conn: TcpStream) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let length = content_length(&head).context("a request without content-length")?;
        while buf.len() < head_end + length {
            let n = conn.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "connection closed inside a request body");
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = buf.drain(..head_end + length).skip(head_end).collect();
        let (status, answer) = if head.starts_with("POST /apis/authentication.k8s.io/v1/tokenreviews") {
            REVIEWS.fetch_add(1, Ordering::Relaxed);
            ("201 Created", review_answer(&body))
        } else {
            (
                "404 Not Found",
                json!({"kind": "Status", "code": 404}).to_string(),
            )
        };
        conn.write_all(
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            )
            .as_bytes(),
        )
        .await?;
    }
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

/// The TokenReview answer: `bench-<i>` authenticated as pod `default/bench<i>` for the requested
/// audiences; anything else not authenticated.
pub fn review_answer(body: &[u8]) -> String {
    let review: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let audiences = review["spec"]["audiences"].clone();
    let status = match token.strip_prefix("bench-").and_then(|i| i.parse::<usize>().ok()) {
        Some(i) => json!({
            "authenticated": true,
            "audiences": audiences,
            "user": {
                "username": "system:serviceaccount:default:bench",
                "extra": {
                    "authentication.kubernetes.io/pod-name": [format!("bench{i}")],
                    "authentication.kubernetes.io/pod-uid": [format!("uid-bench{i}")],
                },
            },
        }),
        None => json!({"authenticated": false, "error": "unknown token"}),
    };
    json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": review["spec"],
        "status": status,
    })
    .to_string()
}

/// `request` with client `id`'s token.
pub fn with_token<T>(mut request: tonic::Request<T>, id: usize) -> anyhow::Result<tonic::Request<T>> {
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token(id))
            .parse()
            .context("authorization metadata")?,
    );
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bench_token_is_its_pod_for_the_asked_audiences_and_others_are_refused() {
        let body = json!({"spec": {"token": token(7), "audiences": ["traffic-control"]}}).to_string();
        let a: Value = serde_json::from_str(&review_answer(body.as_bytes())).expect("json");
        assert_eq!(a["status"]["authenticated"], true);
        assert_eq!(a["status"]["audiences"], json!(["traffic-control"]));
        assert_eq!(
            a["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"],
            json!(["bench7"])
        );
        let other = json!({"spec": {"token": "x"}}).to_string();
        let a: Value = serde_json::from_str(&review_answer(other.as_bytes())).expect("json");
        assert_eq!(a["status"]["authenticated"], false);
        assert_eq!(a["status"]["user"], Value::Null);
    }

    #[test]
    fn content_length_is_read_case_insensitively() {
        assert_eq!(
            content_length("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"),
            Some(12)
        );
        assert_eq!(content_length("GET / HTTP/1.1\r\n\r\n"), None);
    }
}
