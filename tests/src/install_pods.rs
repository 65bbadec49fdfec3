//! The installed chart's control plane and ingress gateway as pods, for the install suite's
//! authentication test: the gateway Envoy's stats and its projected xDS token (through `kubectl
//! exec`), the control plane's `/metrics` (from the host, on the pod IP) and a control-plane
//! restart (its pod deleted, the Deployment's new one ready).
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use serde_json::Value;

use crate::e2e::{http_get, wait_until, Pod};
use crate::e2e_faults::prometheus_value;
use crate::e2e_parse::stat;
use crate::install::Install;

/// `app.kubernetes.io/component` of the control plane's and the gateway's pods.
pub const CONTROL_COMPONENT: &str = "control";
pub const GATEWAY_COMPONENT: &str = "ingress-gateway";
/// The chart's defaults: the gateway's container, Envoy admin port, projected token file, and
/// the control plane's HTTP (metrics) port.
const GATEWAY_CONTAINER: &str = "envoy";
const ENVOY_ADMIN_PORT: u16 = 15000;
const GATEWAY_TOKEN_FILE: &str = "/var/run/traffic-xds/token";
const CONTROL_HTTP_PORT: u16 = 9090;

/// The claims of a ServiceAccount token that the test needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// Issued at / expires at, seconds since the epoch.
    pub iat: u64,
    pub exp: u64,
    /// `kubernetes.io.pod.name`: the pod the token is bound to.
    pub pod: Option<String>,
}

/// Decodes a JWT's payload (no signature check: the control plane's TokenReview does that).
pub fn token_claims(token: &str) -> anyhow::Result<TokenClaims> {
    let payload = token.trim().split('.').nth(1).context("not a JWT (no payload)")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .context("JWT payload is not base64url")?;
    let v: Value = serde_json::from_slice(&bytes).context("JWT payload is not JSON")?;
    let secs = |k: &str| v[k].as_u64().with_context(|| format!("JWT has no numeric {k}"));
    Ok(TokenClaims {
        iat: secs("iat")?,
        exp: secs("exp")?,
        pod: v["kubernetes.io"]["pod"]["name"].as_str().map(String::from),
    })
}

/// The running, not terminating pods of `items` (a `kubectl get pods -o json` list).
pub fn live_pods(list: &Value) -> Vec<Pod> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && p["status"]["phase"] == "Running")
        .filter_map(Pod::from_json)
        .collect()
}

impl Install {
    fn component_pods(&self, component: &str) -> anyhow::Result<Value> {
        self.e2e.kubectl_json(&[
            "-n",
            &self.namespace,
            "get",
            "pods",
            "-l",
            &format!("app.kubernetes.io/component={component}"),
        ])
    }

    /// The one live pod of a component of the chart.
    pub fn component_pod(&self, component: &str) -> anyhow::Result<Pod> {
        let mut pods = live_pods(&self.component_pods(component)?);
        match pods.len() {
            1 => Ok(pods.remove(0)),
            _ => {
                let names: Vec<_> = pods.iter().map(|p| p.name.as_str()).collect();
                bail!("{component}: want one live pod, found {names:?}")
            }
        }
    }

    /// Runs `cmd` in the gateway's Envoy container.
    fn gateway_exec(&self, cmd: &[&str]) -> anyhow::Result<String> {
        let pod = self.component_pod(GATEWAY_COMPONENT)?.name;
        let mut args = vec!["-n", &self.namespace, "exec", &pod, "-c", GATEWAY_CONTAINER, "--"];
        args.extend_from_slice(cmd);
        self.e2e.kubectl(&args)
    }

    /// A counter or gauge of the gateway's Envoy (`/stats`, exact name).
    pub fn gateway_stat(&self, name: &str) -> anyhow::Result<Option<u64>> {
        let url = format!("http://127.0.0.1:{ENVOY_ADMIN_PORT}/stats?filter=^{name}$");
        let out = self.gateway_exec(&["wget", "-qO-", "-T", "5", &url])?;
        Ok(stat(&out, name))
    }

    /// The gateway's projected xDS token, as the kubelet last wrote it.
    pub fn gateway_token(&self) -> anyhow::Result<TokenClaims> {
        token_claims(&self.gateway_exec(&["cat", GATEWAY_TOKEN_FILE])?)
    }

    /// A sample of the control plane's `/metrics` (0 when absent).
    pub fn control_metric(&self, name: &str) -> anyhow::Result<f64> {
        let ip = self.component_pod(CONTROL_COMPONENT)?.ip;
        let body = http_get(&format!("{ip}:{CONTROL_HTTP_PORT}"), "/metrics")?;
        Ok(prometheus_value(&body, name).unwrap_or(0.0))
    }

    /// Deletes the control plane's pod and waits until the Deployment's new one is ready and the
    /// old one is gone (so no proxy can still be on it); once every other test of the pass has
    /// ended (see [`Install::require_unguarded`]). Returns the new pod's name.
    pub fn restart_control_plane(&self, timeout: Duration) -> anyhow::Result<String> {
        self.exclusively(|| {
            let old = self.component_pod(CONTROL_COMPONENT)?.name;
            self.e2e
                .kubectl(&["-n", &self.namespace, "delete", "pod", &old, "--wait=false"])?;
            let new = wait_until(
                "a new, ready control-plane pod",
                timeout,
                Duration::from_secs(1),
                || {
                    let list = self.component_pods(CONTROL_COMPONENT)?;
                    let ready = list["items"].as_array().into_iter().flatten().find(|p| {
                        p["metadata"]["name"] != old.as_str()
                            && p["metadata"]["deletionTimestamp"].is_null()
                            && p["status"]["conditions"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    });
                    Ok(ready.and_then(|p| p["metadata"]["name"].as_str().map(String::from)))
                },
            )?;
            wait_until(
                "the old control-plane pod to be gone",
                timeout,
                Duration::from_secs(1),
                || {
                    let list = self.component_pods(CONTROL_COMPONENT)?;
                    let names = list["items"].as_array().into_iter().flatten();
                    Ok(names
                        .into_iter()
                        .all(|p| p["metadata"]["name"] != old.as_str())
                        .then_some(()))
                },
            )?;
            Ok(new)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload);
        format!("eyJhbGciOiJSUzI1NiJ9.{b}.c2ln")
    }

    #[test]
    fn a_projected_tokens_claims_are_read_from_its_payload() {
        let t = jwt(
            r#"{"aud":["traffic-control"],"exp":1700000600,"iat":1700000000,"kubernetes.io":{"namespace":"n","pod":{"name":"gw-1","uid":"u"}}}"#,
        );
        assert_eq!(
            token_claims(&format!("{t}\n")).expect("claims"),
            TokenClaims {
                iat: 1_700_000_000,
                exp: 1_700_000_600,
                pod: Some("gw-1".into())
            }
        );
    }

    #[test]
    fn garbage_is_not_a_token() {
        assert!(token_claims("nodots").is_err());
        assert!(token_claims("a.!!!.c").is_err());
        assert!(token_claims(&jwt(r#"{"exp":1}"#)).is_err(), "no iat");
    }

    #[test]
    fn only_running_pods_not_being_deleted_are_live() {
        let list: Value = serde_json::json!({"items": [
            {"metadata": {"name": "a", "uid": "1"}, "status": {"phase": "Running", "podIP": "10.0.0.1"}},
            {"metadata": {"name": "b", "uid": "2", "deletionTimestamp": "2026-01-01T00:00:00Z"}, "status": {"phase": "Running"}},
            {"metadata": {"name": "c", "uid": "3"}, "status": {"phase": "Pending"}},
        ]});
        let live: Vec<_> = live_pods(&list).into_iter().map(|p| (p.name, p.ip)).collect();
        assert_eq!(live, vec![("a".to_string(), "10.0.0.1".to_string())]);
    }
}
