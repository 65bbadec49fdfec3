//! Harness of the install suite (`tests/tests/install.rs`, run by `cargo xtask e2e-install`): the
//! Helm chart applied to the real single-node cluster, so the agent, the control plane, the ingress
//! gateway and Prometheus run as pods. On top of the e2e harness ([`crate::e2e`]): the gateway
//! Service reached from the host with curl (plain and TLS), Ingress objects, Prometheus' HTTP API,
//! and the checks that an uninstall left nothing on the node (used by the xtask after the chart's
//! pre-delete hook ran).
//!
//! Gated like the e2e suite: nothing runs unless `TRAFFIC_E2E=1`; with it, a missing cluster or a
//! cluster without the chart installed skips the test, except under `CI=true`, where it fails.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::e2e::{run_timeout, wait_until, E2e, Out, TestNamespace};

/// Namespace the chart is installed in (set by the xtask; default [`DEFAULT_NAMESPACE`]).
pub const ENV_NAMESPACE: &str = "TRAFFIC_INSTALL_NAMESPACE";
/// The chart's Prometheus Service name (set by the xtask; default [`DEFAULT_PROMETHEUS`]).
pub const ENV_PROMETHEUS: &str = "TRAFFIC_INSTALL_PROMETHEUS";
pub const DEFAULT_NAMESPACE: &str = "traffic-install";
pub const DEFAULT_PROMETHEUS: &str = "traffic-manager-prometheus";
/// The ingress gateway's Service (`ingress.service.name`).
pub const GATEWAY_SERVICE: &str = "traffic-ingress";
/// Label on every namespace this suite creates (on top of the e2e suite's `traffic-e2e=true`),
/// so the xtask deletes exactly these.
pub const NAMESPACE_LABEL: &str = "traffic-install";
/// The install test that waits for the kubelet to renew the gateway's token (~10 minutes);
/// `cargo xtask e2e-install` runs it in one pass only.
pub const TOKEN_RENEWAL_TEST: &str = "a_gateway_keeps_serving_and_updating_across_its_token_renewal";
/// `xds.gatewayTokenSeconds` of the install passes: the API's minimum, so that the kubelet renews
/// the gateway's token within a pass.
pub const GATEWAY_TOKEN_SECONDS: u64 = 600;
/// Label on every sidecar container the agent starts.
pub const SIDECAR_MANAGED_BY: &str = "traffic.envoy.managed-by";
/// Pod annotations the agent sets.
pub const PROXY_ANNOTATION: &str = "traffic.envoy.proxy";
pub const MODE_ANNOTATION: &str = "traffic.redirect.mode";
/// Comment prefix of every iptables rule the agent installs in a pod netns.
pub const IPTABLES_COMMENT: &str = "traffic-manager:";

/// ClusterIP of `service` in `namespace`.
fn service_ip(e2e: &E2e, namespace: &str, service: &str) -> anyhow::Result<String> {
    let ip = e2e.kubectl(&[
        "-n",
        namespace,
        "get",
        "service",
        service,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    let ip = ip.trim().to_string();
    anyhow::ensure!(!ip.is_empty(), "Service {service} has no ClusterIP");
    Ok(ip)
}

/// Held shared by every install test for its whole run and exclusively by a control-plane restart
/// ([`Install::require_unguarded`]), so that no other test of the pass sees the control plane go
/// away mid-test.
static CONTROL_PLANE_STEADY: RwLock<()> = RwLock::new(());

/// The suite's view of the installed chart.
pub struct Install {
    pub e2e: E2e,
    /// Namespace of the chart's objects.
    pub namespace: String,
    pub prometheus_service: String,
    /// ClusterIP of the gateway Service (the host reaches it through kube-proxy); read once, the
    /// chart's Services stay for the whole pass.
    pub gateway_ip: String,
    /// Shared hold on [`CONTROL_PLANE_STEADY`] (`None` for a test that restarts the control plane).
    steady: Option<RwLockReadGuard<'static, ()>>,
}

fn skip_or_fail(reason: String) -> Option<Install> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("install test cannot run under CI: {reason}");
    }
    eprintln!("skipping install test: {reason}");
    None
}

impl Install {
    /// Call first in every install test: `let Some(inst) = Install::require() else { return };`.
    pub fn require() -> Option<Self> {
        let mut inst = Self::require_unguarded()?;
        inst.steady = Some(
            CONTROL_PLANE_STEADY
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        Some(inst)
    }

    /// [`Self::require`] for a test that restarts the control plane: it holds no shared hold, so
    /// its restart waits for every other running test of the pass to end.
    pub fn require_unguarded() -> Option<Self> {
        let e2e = E2e::require()?;
        let namespace = std::env::var(ENV_NAMESPACE).unwrap_or_else(|_| DEFAULT_NAMESPACE.into());
        let prometheus_service = std::env::var(ENV_PROMETHEUS).unwrap_or_else(|_| DEFAULT_PROMETHEUS.into());
        let gateway_ip = match service_ip(&e2e, &namespace, GATEWAY_SERVICE) {
            Ok(ip) => ip,
            Err(e) => {
                return skip_or_fail(format!(
                    "the chart is not installed in {namespace} (cargo xtask e2e-install does it): {e:#}"
                ))
            }
        };
        Some(Self {
            e2e,
            namespace,
            prometheus_service,
            gateway_ip,
            steady: None,
        })
    }

    /// Waits for every test holding a shared hold to end, then keeps them out while `f` runs.
    pub(crate) fn exclusively<T>(&self, f: impl FnOnce() -> T) -> T {
        assert!(
            self.steady.is_none(),
            "a test that restarts the control plane gets its Install from require_unguarded()"
        );
        let _all = CONTROL_PLANE_STEADY
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f()
    }

    /// A fresh namespace with the test app (see [`E2e::namespace`]), labelled for the xtask's sweep.
    pub fn app(&self, scenario: &str) -> anyhow::Result<TestNamespace<'_>> {
        let ns = self.e2e.namespace(&format!("install-{scenario}"))?;
        self.e2e
            .kubectl(&["label", "namespace", &ns.name, &format!("{NAMESPACE_LABEL}=true")])?;
        Ok(ns)
    }

    /// `kubectl apply` of a YAML document (through a temp file).
    pub fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        let path = std::env::temp_dir().join(format!("traffic-install-{}.yaml", crate::e2e::random_suffix()));
        std::fs::write(&path, yaml).with_context(|| format!("write {}", path.display()))?;
        let res = self.e2e.kubectl(&["apply", "-f", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        res.map(drop)
    }

    /// An Ingress `name` in `ns` routing `path` (Prefix) of `host` to `service`:`port`, with a TLS
    /// section naming `tls_secret` for `host` when given.
    pub fn ingress(
        &self,
        ns: &TestNamespace,
        name: &str,
        host: &str,
        path: &str,
        backend: (&str, u16),
        tls_secret: Option<&str>,
    ) -> anyhow::Result<()> {
        self.apply(&ingress_yaml(&ns.name, name, host, path, backend, tls_secret))
    }

    /// Host curl with a deadline; `args` after the common ones (`-sS`, a 10 s timeout).
    pub fn curl(&self, args: &[&str]) -> anyhow::Result<Out> {
        run_timeout(
            Command::new("curl").args(["-sS", "--max-time", "10"]).args(args),
            Duration::from_secs(120),
        )
    }

    /// One plain HTTP GET of `path` through the gateway with `Host: host` (and extra curl args):
    /// the parsed reply.
    pub fn gateway_get(&self, host: &str, path: &str, extra: &[&str]) -> anyhow::Result<Reply> {
        let url = format!("http://{}{path}", self.gateway_ip);
        let mut args = vec!["-i", "-H"];
        let host_header = format!("Host: {host}");
        args.push(&host_header);
        args.extend_from_slice(extra);
        args.push(&url);
        let out = self.curl(&args)?;
        anyhow::ensure!(out.ok, "curl {url} (Host {host}): {}", out.stderr.trim());
        Reply::parse(&out.stdout)
    }

    /// `n` GETs of `path` through the gateway in one curl (one connection): the bodies and status
    /// codes, one `<body>` line and one `HTTP <code>` line per request.
    pub fn gateway_get_many(
        &self,
        host: &str,
        path: &str,
        n: usize,
        extra: &[&str],
    ) -> anyhow::Result<String> {
        let url = format!("http://{}{path}", self.gateway_ip);
        let host_header = format!("Host: {host}");
        let mut args: Vec<&str> = vec!["-H", &host_header, "-w", "HTTP %{http_code}\\n"];
        args.extend_from_slice(extra);
        for _ in 0..n {
            args.push(&url);
        }
        let out = run_timeout(
            Command::new("curl").args(["-sS", "--max-time", "10"]).args(&args),
            Duration::from_secs(30 + n as u64),
        )?;
        Ok(out.stdout)
    }

    /// Waits until `https://<host><path>` through the gateway (SNI `host`) answers 200 with a
    /// certificate that verifies against `cacert`: the body. Then checks that without `cacert` the
    /// certificate is refused (it is really the self-signed one).
    pub fn wait_gateway_https(
        &self,
        host: &str,
        path: &str,
        cacert: &Path,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let resolve = format!("{host}:443:{}", self.gateway_ip);
        let url = format!("https://{host}{path}");
        let cacert = cacert.display().to_string();
        let body = wait_until(
            &format!("{url} through the gateway, verified with {cacert}"),
            timeout,
            Duration::from_millis(500),
            || {
                let out = self.curl(&[
                    "--cacert",
                    &cacert,
                    "--resolve",
                    &resolve,
                    "-w",
                    "\nverify=%{ssl_verify_result} code=%{http_code}",
                    &url,
                ])?;
                Ok((out.ok && out.stdout.contains("verify=0 code=200")).then_some(out.stdout))
            },
        )?;
        let refused = self.curl(&["--resolve", &resolve, &url])?;
        anyhow::ensure!(
            !refused.ok,
            "without {cacert} the certificate must be refused: {}",
            refused.stdout
        );
        Ok(body)
    }

    /// Waits until a GET through the gateway answers 200 with a reply of the test app.
    pub fn wait_gateway_serves(&self, host: &str, path: &str, timeout: Duration) -> anyhow::Result<Reply> {
        wait_until(
            &format!("the gateway to serve http://{host}{path}"),
            timeout,
            Duration::from_millis(500),
            || {
                let r = self.gateway_get(host, path, &[])?;
                Ok((r.status == 200 && r.body.starts_with("reviews-")).then_some(r))
            },
        )
    }

    /// A Prometheus instant query through its HTTP API: `(labels, value)` per series.
    pub fn prometheus_query(&self, query: &str) -> anyhow::Result<Vec<(Value, f64)>> {
        let ip = service_ip(&self.e2e, &self.namespace, &self.prometheus_service)?;
        let port = self.e2e.kubectl(&[
            "-n",
            &self.namespace,
            "get",
            "service",
            &self.prometheus_service,
            "-o",
            "jsonpath={.spec.ports[0].port}",
        ])?;
        let url = format!("http://{ip}:{}/api/v1/query", port.trim());
        let q = format!("query={query}");
        let out = self.curl(&["-G", &url, "--data-urlencode", &q])?;
        anyhow::ensure!(out.ok, "curl {url}: {}", out.stderr.trim());
        parse_prometheus_vector(&out.stdout)
    }
}

/// Labels `deployment` of `ns` with `traffic.envoy.enabled=true` and waits until each of its
/// running pods carries both agent annotations (sidecar running, redirect in `mode`).
pub fn enable(ns: &TestNamespace, deployment: &str, selector: &str, mode: &str) -> anyhow::Result<()> {
    let pods = ns.pods(selector)?;
    anyhow::ensure!(!pods.is_empty(), "no running pods for {selector} in {}", ns.name);
    ns.label(
        &format!("deployment/{deployment}"),
        &["traffic.envoy.enabled=true"],
    )?;
    for pod in pods {
        wait_until(
            &format!(
                "the agent to annotate {}/{} (sidecar + {mode} redirect)",
                ns.name, pod.name
            ),
            Duration::from_secs(120),
            Duration::from_millis(300),
            || {
                let p = ns.get_pod(&pod.name)?;
                Ok(p.filter(|p| {
                    p.annotation(MODE_ANNOTATION) == Some(mode)
                        && p.annotation(PROXY_ANNOTATION).is_some_and(|a| !a.is_empty())
                })
                .map(drop))
            },
        )?;
    }
    Ok(())
}

/// Makes every reviews pod of `ns` also answer `path` (busybox httpd serves files; the test app
/// only has `/index.html`) with its `<pod name> <version>` line.
pub fn serve_path(ns: &TestNamespace, path: &str) -> anyhow::Result<()> {
    let file = path.trim_start_matches('/');
    anyhow::ensure!(
        !file.is_empty()
            && file
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "serve_path takes one plain path element, got {path:?}"
    );
    for pod in ns.pods("app=reviews")? {
        let out = ns.sh(
            &pod.name,
            &format!("cp /www/index.html /www/{file}"),
            Duration::from_secs(30),
        )?;
        anyhow::ensure!(out.ok, "{}: cp: {}", pod.name, out.stderr.trim());
    }
    Ok(())
}

/// A self-signed certificate for `host` (openssl on the host): `(cert.pem, key.pem)` in `dir`.
pub fn self_signed_cert(dir: &Path, host: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    let out = run_timeout(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .args(["-subj", &format!("/CN={host}")])
            .args(["-addext", &format!("subjectAltName=DNS:{host}")]),
        Duration::from_secs(60),
    )?;
    anyhow::ensure!(out.ok, "openssl req: {}", out.stderr.trim());
    Ok((cert, key))
}

// ---------------------------------------------------------------------------------------------
// Pure parts

/// An Ingress (networking.k8s.io/v1) with one rule: `host` + `path` (Prefix) -> `backend`.
pub fn ingress_yaml(
    namespace: &str,
    name: &str,
    host: &str,
    path: &str,
    backend: (&str, u16),
    tls_secret: Option<&str>,
) -> String {
    let tls = tls_secret
        .map(|s| format!("  tls:\n    - hosts: [\"{host}\"]\n      secretName: {s}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  namespace: {namespace}
spec:
{tls}  rules:
    - host: \"{host}\"
      http:
        paths:
          - path: {path}
            pathType: Prefix
            backend:
              service:
                name: {svc}
                port:
                  number: {port}
",
        svc = backend.0,
        port = backend.1
    )
}

/// An HTTP reply as `curl -i` prints it (the last header block, after any `100 Continue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let text = text.replace("\r\n", "\n");
        let mut rest = text.as_str();
        loop {
            let Some((head, body)) = rest.split_once("\n\n") else {
                bail!("no header block in {text:?}");
            };
            let mut lines = head.lines();
            let status_line = lines.next().unwrap_or("");
            let status: u16 = status_line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("status line {status_line:?}"))?;
            if status == 100 {
                rest = body;
                continue;
            }
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            return Ok(Self {
                status,
                headers,
                body: body.to_string(),
            });
        }
    }

    /// Values of header `name` (lowercase).
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The pod name of a test-app reply (`<pod name> <version>`).
    pub fn pod(&self) -> Option<&str> {
        self.body
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with("reviews-"))
    }
}

/// A `Set-Cookie` value: `(cookie value, Max-Age)` if it sets `name`.
pub fn set_cookie(header: &str, name: &str) -> Option<(String, Option<u64>)> {
    let mut parts = header.split(';').map(str::trim);
    let (n, v) = parts.next()?.split_once('=')?;
    if n != name {
        return None;
    }
    let max_age = parts
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case("max-age"))
        .and_then(|(_, v)| v.trim().parse().ok());
    Some((v.trim_matches('"').to_string(), max_age))
}

/// Counts of `gateway_get_many` output: replies per version, non-200 statuses, other lines.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GatewayTally {
    pub replies: crate::e2e_parse::Tally,
    pub ok: usize,
    pub not_ok: Vec<String>,
}

impl GatewayTally {
    pub fn of(output: &str) -> Self {
        let mut t = GatewayTally::default();
        let mut bodies = String::new();
        for line in output.lines() {
            // `-w` appends the code right after the body; a body without a final newline puts it
            // on the same line.
            let (body, code) = match line.find("HTTP ") {
                Some(i) => (&line[..i], Some(line[i + 5..].trim())),
                None => (line, None),
            };
            if !body.trim().is_empty() {
                bodies.push_str(body);
                bodies.push('\n');
            }
            match code {
                Some("200") => t.ok += 1,
                Some(c) => t.not_ok.push(c.to_string()),
                None => {}
            }
        }
        t.replies = crate::e2e_parse::Tally::of(&bodies);
        t
    }
}

/// The `(metric labels, value)` of a Prometheus instant-query answer (`resultType` vector).
pub fn parse_prometheus_vector(json: &str) -> anyhow::Result<Vec<(Value, f64)>> {
    let v: Value = serde_json::from_str(json).with_context(|| format!("Prometheus answer {json:?}"))?;
    anyhow::ensure!(
        v.get("status").and_then(Value::as_str) == Some("success"),
        "Prometheus query failed: {json}"
    );
    let result = v
        .pointer("/data/result")
        .and_then(Value::as_array)
        .context("no data.result")?;
    result
        .iter()
        .map(|s| {
            let value = s
                .pointer("/value/1")
                .and_then(Value::as_str)
                .and_then(|x| x.parse::<f64>().ok())
                .context("sample without a value")?;
            Ok((s.get("metric").cloned().unwrap_or(Value::Null), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_after_100_continue_is_parsed_with_its_headers_and_body() {
        let text = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nSet-Cookie: mycookie=\"abc\"; Max-Age=60; Path=/\r\nServer: envoy\r\n\r\nreviews-v1-x v1\n";
        let r = Reply::parse(text).expect("parses");
        assert_eq!(r.status, 200);
        assert_eq!(r.pod(), Some("reviews-v1-x"));
        let cookie = r.header_values("set-cookie").next().expect("set-cookie");
        assert_eq!(set_cookie(cookie, "mycookie"), Some(("abc".into(), Some(60))));
        assert_eq!(set_cookie(cookie, "other"), None);
    }

    #[test]
    fn a_cookie_without_max_age_has_none() {
        assert_eq!(set_cookie("c=1; Path=/", "c"), Some(("1".into(), None)));
    }

    #[test]
    fn the_gateway_tally_counts_versions_and_statuses_with_or_without_a_final_newline() {
        let out =
            "reviews-v1-a v1\nHTTP 200\nreviews-v2-b v2HTTP 200\nHTTP 503\nno healthy upstreamHTTP 503\n";
        let t = GatewayTally::of(out);
        assert_eq!(t.ok, 2);
        assert_eq!(t.not_ok, vec!["503", "503"]);
        assert_eq!(t.replies.count("v1"), 1);
        assert_eq!(t.replies.count("v2"), 1);
        assert_eq!(t.replies.other, 1);
    }

    #[test]
    fn the_ingress_has_a_tls_section_only_with_a_secret() {
        let plain = ingress_yaml("ns", "i", "a.test", "/productpage", ("reviews", 9080), None);
        assert!(!plain.contains("tls:"));
        assert!(plain.contains("pathType: Prefix"));
        assert!(plain.contains("number: 9080"));
        let tls = ingress_yaml(
            "ns",
            "i",
            "a.test",
            "/productpage",
            ("reviews", 9080),
            Some("cert"),
        );
        assert!(tls.contains("secretName: cert"));
        assert!(tls.contains("hosts: [\"a.test\"]"));
    }

    #[test]
    fn prometheus_vectors_are_read_and_errors_reported() {
        let ok = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"envoy_cluster_name":"9080|ns|reviews"},"value":[1.5,"12"]}]}}"#;
        let v = parse_prometheus_vector(ok).expect("parses");
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].1, 12.0);
        assert_eq!(v[0].0["envoy_cluster_name"], "9080|ns|reviews");
        assert!(parse_prometheus_vector(r#"{"status":"error","error":"bad"}"#).is_err());
    }
}
