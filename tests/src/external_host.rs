//! A host outside the cluster for the e2e tests: a network namespace joined to the node by a veth
//! pair, at [`EXTERNAL_V4`] in TEST-NET-3 (203.0.113.0/24, never routed on the Internet), running a
//! small httpbin-like HTTP server on port 80 (`/get`, `/delay/<seconds>`). Pods reach it through
//! the node like any address outside the cluster; it stands in for `httpbin.org`, which this
//! machine cannot reach.
//!
//! On drop (also when a test fails): the server is killed, the two FORWARD rules are deleted, the
//! namespace (and with it the veth pair) is removed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::e2e::{run_timeout, wait_until};
use crate::pod::{unique_name, KillOnDrop, Netns, Placement};

/// The host's address.
pub const EXTERNAL_V4: &str = "203.0.113.10";
/// The node's end of the veth pair.
const NODE_V4: &str = "203.0.113.1";
const PREFIX: &str = "203.0.113.0/24";
const RULE_COMMENT: &str = "traffic-e2e-external-host";

/// The server: `GET /delay/<s>` answers after `s` seconds, anything else at once; the body names
/// the path and the Host header it got.
const SERVER: &str = r#"
import http.server, sys, time
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        parts = self.path.split("/")
        if len(parts) >= 3 and parts[1] == "delay":
            try:
                time.sleep(min(float(parts[2]), 30.0))
            except ValueError:
                pass
        body = ("httpbin-stand-in %s host=%s\n" % (self.path, self.headers.get("Host"))).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 80), Handler).serve_forever()
"#;

/// FORWARD rules that let pods reach the host whatever the policy of the chain (dockerd may set
/// it to DROP), in both directions.
fn forward_rules() -> [Vec<String>; 2] {
    let rule = |dir: &str| {
        [
            dir,
            PREFIX,
            "-m",
            "comment",
            "--comment",
            RULE_COMMENT,
            "-j",
            "ACCEPT",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
    };
    [rule("-d"), rule("-s")]
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = run_timeout(Command::new(program).args(args), Duration::from_secs(30))?;
    anyhow::ensure!(out.ok, "{program} {}: {}", args.join(" "), out.stderr.trim());
    Ok(())
}

/// The running host; see the module doc.
pub struct ExternalHost {
    // Field order is drop order: the server first, then the rules, then the namespace.
    _server: Option<KillOnDrop>,
    rules_added: usize,
    _netns: Netns,
}

impl ExternalHost {
    /// Creates the namespace and link, starts the server and waits until the node reaches it.
    pub fn start() -> anyhow::Result<Self> {
        let python = Path::new("/usr/bin/python3");
        anyhow::ensure!(
            python.is_file(),
            "{} is needed for the external host",
            python.display()
        );
        let netns = Netns::create(&unique_name("tmx"))?;
        let mut host = ExternalHost {
            _server: None,
            rules_added: 0,
            _netns: netns,
        };
        let ns = host._netns.name().to_string();
        let outside = format!("{ns}a");
        let inside = format!("{ns}b");
        anyhow::ensure!(outside.len() <= 15, "interface name {outside} too long");
        run(
            "ip",
            &[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside, "netns", &ns,
            ],
        )?;
        run("ip", &["addr", "add", &format!("{NODE_V4}/24"), "dev", &outside])
            .context("is another external host (203.0.113.1) still up on this node?")?;
        run("ip", &["link", "set", &outside, "up"])?;
        run(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{EXTERNAL_V4}/24"),
                "dev",
                &inside,
            ],
        )?;
        run("ip", &["-n", &ns, "link", "set", &inside, "up"])?;
        run("ip", &["-n", &ns, "route", "add", "default", "via", NODE_V4])?;
        for rule in forward_rules() {
            let mut args = vec!["-w", "-I", "FORWARD", "1"];
            args.extend(rule.iter().map(String::as_str));
            run("iptables", &args)?;
            host.rules_added += 1;
        }
        let placement = Placement {
            netns: host._netns.path(),
            cgroup: None,
            uid: None,
        };
        let mut cmd = Command::new(python);
        cmd.args(["-c", SERVER])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        host._server = Some(KillOnDrop(placement.spawn(&mut cmd)?));
        wait_until(
            "the external host's server answers the node",
            Duration::from_secs(20),
            Duration::from_millis(200),
            || {
                let out = run_timeout(
                    Command::new("curl").args([
                        "-sS",
                        "--max-time",
                        "2",
                        &format!("http://{EXTERNAL_V4}/get"),
                    ]),
                    Duration::from_secs(5),
                )?;
                Ok((out.ok && out.stdout.starts_with("httpbin-stand-in")).then_some(()))
            },
        )?;
        Ok(host)
    }
}

impl Drop for ExternalHost {
    fn drop(&mut self) {
        if let Some(mut server) = self._server.take() {
            let _ = server.0.kill();
            let _ = server.0.wait();
        }
        for rule in forward_rules().iter().take(self.rules_added) {
            let mut args = vec!["-w", "-D", "FORWARD"];
            args.extend(rule.iter().map(String::as_str));
            if let Err(e) = run("iptables", &args) {
                eprintln!("cleanup: {e:#}");
            }
        }
        // The namespace goes with `_netns`, and the veth pair with it.
    }
}
