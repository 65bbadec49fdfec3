//! The demo's Envoy sidecar: its ADS bootstrap (pure), the process, and admin requests made from
//! inside the pod's network namespace (admin listens on the pod's 127.0.0.1 only).
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use traffic_sidecar::bootstrap::BootstrapOptions;
use traffic_sidecar::PodRef;

use super::plan::DemoPod;

/// Envoy's admin port on the pod's loopback.
pub const ADMIN_PORT: u16 = 15000;
/// The outbound listener the redirect sends connections to.
pub const OUTBOUND_PORT: u16 = 15001;

/// The bootstrap the agent gives its sidecars (`traffic_sidecar::bootstrap`): node id
/// `<pod>.<namespace>`, admin on 127.0.0.1 only, every resource over one state-of-the-world ADS
/// stream to the control plane at `xds`.
pub fn bootstrap(pod: &DemoPod, xds: SocketAddr) -> anyhow::Result<String> {
    let pod = PodRef {
        uid: format!("demo-{}", pod.name),
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
    };
    let mut options = BootstrapOptions::new(xds.to_string());
    options.admin_port = ADMIN_PORT;
    Ok(traffic_sidecar::bootstrap::render(&pod, &options)?)
}

/// Runs `f` on a thread that entered the network namespace at `netns` (only that thread moves).
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let ns = File::open(netns).with_context(|| format!("open {}", netns.display()))?;
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

/// `GET <path>` on `addr` from inside `netns`: status and body.
pub fn http_get_in(netns: &Path, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let path = path.to_string();
    in_netns(netns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .with_context(|| format!("connect {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
        )?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").context("no HTTP response")?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no status")?;
        Ok((status, dechunk(head, body)))
    })
}

fn dechunk(head: &str, body: &str) -> String {
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
    out
}

/// Polls `probe` every 100 ms until it returns `Some`, `alive` says the process died, `stop` says
/// the user interrupted, or `timeout` passes.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> anyhow::Result<()>,
    mut probe: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        alive()?;
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The listener names and addresses from admin `/listeners` (`name::address` per line).
pub fn parse_listeners(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once("::"))
        .map(|(n, a)| (n.trim().to_string(), a.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_is_the_sidecars_with_the_demo_pods_node_id() {
        let pod = DemoPod {
            name: "client".into(),
            namespace: "default".into(),
            ip: "10.244.0.2".parse().expect("ip"),
            body: String::new(),
            weight: 0,
        };
        let b = bootstrap(&pod, "169.254.1.1:15010".parse().expect("addr")).expect("bootstrap");
        let v: serde_json::Value = serde_json::from_str(&b).expect("JSON");
        assert_eq!(v["node"]["id"], "client.default");
        assert_eq!(v["admin"]["address"]["socket_address"]["address"], "127.0.0.1");
        assert_eq!(v["admin"]["address"]["socket_address"]["port_value"], 15000);
        assert_eq!(v["dynamic_resources"]["ads_config"]["api_type"], "GRPC");
        assert!(b.contains(r#""address":"169.254.1.1","port_value":15010"#), "{b}");
    }

    #[test]
    fn admin_listener_lines_are_split_into_name_and_address() {
        let text = "outbound::0.0.0.0:15001\nstats::0.0.0.0:8900\n";
        assert_eq!(
            parse_listeners(text),
            [
                ("outbound".to_string(), "0.0.0.0:15001".to_string()),
                ("stats".to_string(), "0.0.0.0:8900".to_string())
            ]
        );
    }

    #[test]
    fn chunked_admin_bodies_are_reassembled() {
        assert_eq!(
            dechunk(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked",
                "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
            ),
            "abcde"
        );
        assert_eq!(dechunk("HTTP/1.1 200 OK", "plain"), "plain");
    }
}
