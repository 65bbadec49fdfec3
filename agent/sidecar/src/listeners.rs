//! "Has this sidecar's configuration arrived?" — a sidecar gets its pod's redirect only once
//! Envoy has an active listener on the proxy port, i.e. once its first LDS update was accepted.
//!
//! Envoy's admin `/ready` is not enough: it turns `LIVE` when the initial fetch *times out* too
//! (`initial_fetch_timeout`, 15 s by default), so a sidecar whose control plane is unreachable
//! reports ready with no listener at all, and redirecting to it refuses every connection.
//! `/listeners?format=json` lists the active (warmed, bound) listeners with their addresses.
//!
//! The answer's parsing ([`active_ports`]) is pure; [`wait_for_listener`] polls a [`ProxyAdmin`].

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use crate::admin::ProxyAdmin;
use crate::netns::{NetnsError, Response};

/// Envoy admin path listing the active listeners as JSON.
pub const LISTENERS_PATH: &str = "/listeners?format=json";

/// Why an admin answer tells nothing about the listeners.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenersError {
    #[error("Envoy admin {LISTENERS_PATH} answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("Envoy admin {LISTENERS_PATH} answered something that is not its JSON: {0}")]
    Json(String),
}

/// Ports of the active listeners in an answer to [`LISTENERS_PATH`]
/// (`{"listener_statuses":[{"name":…,"local_address":{"socket_address":{"port_value":15001,…}}}]}`;
/// an Envoy without listeners answers `{}`).
pub fn active_ports(response: &Response) -> Result<Vec<u16>, ListenersError> {
    if response.status != 200 {
        return Err(ListenersError::Status {
            status: response.status,
            body: response.body.chars().take(200).collect(),
        });
    }
    let v: serde_json::Value =
        serde_json::from_str(&response.body).map_err(|e| ListenersError::Json(e.to_string()))?;
    let statuses = match v.get("listener_statuses") {
        None => return Ok(Vec::new()),
        Some(s) => s
            .as_array()
            .ok_or_else(|| ListenersError::Json("listener_statuses is not a list".into()))?,
    };
    let mut ports: Vec<u16> = statuses
        .iter()
        .filter_map(|l| l.pointer("/local_address/socket_address/port_value")?.as_u64())
        .filter_map(|p| u16::try_from(p).ok())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// How [`wait_for_listener`] polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerWait {
    /// Envoy's admin port in the pod netns.
    pub admin_port: u16,
    /// Give up after this long.
    pub timeout: Duration,
    /// Pause between two polls.
    pub every: Duration,
    /// Consecutive admin connection failures after which Envoy counts as gone (its admin listens
    /// from the start, so an unreachable admin means the sidecar exited).
    pub max_unreachable: u32,
}

impl Default for ListenerWait {
    fn default() -> Self {
        Self {
            admin_port: crate::bootstrap::DEFAULT_ADMIN_PORT,
            timeout: Duration::from_secs(60),
            every: Duration::from_millis(100),
            max_unreachable: 20,
        }
    }
}

/// Why a sidecar did not get its listener.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("no active listener on port {port} after {seconds} s: its first configuration (LDS) has not arrived from the control plane (last answer: {last})")]
    Timeout { port: u16, seconds: u64, last: String },
    #[error("Envoy's admin interface stopped answering while waiting for the listener on port {port} (did the sidecar exit?): {source}")]
    Unreachable {
        port: u16,
        #[source]
        source: NetnsError,
    },
}

/// Polls the sidecar's admin in `netns` until it has an active listener on `port`; returns how
/// long that took.
pub async fn wait_for_listener(
    admin: &dyn ProxyAdmin,
    netns: &Path,
    port: u16,
    wait: &ListenerWait,
) -> Result<Duration, WaitError> {
    let started = Instant::now();
    let mut unreachable = 0;
    loop {
        let last = match admin.get(netns, wait.admin_port, LISTENERS_PATH).await {
            Ok(r) => {
                unreachable = 0;
                match active_ports(&r) {
                    Ok(ports) if ports.contains(&port) => return Ok(started.elapsed()),
                    Ok(ports) => format!("active listeners on ports {ports:?}"),
                    Err(e) => e.to_string(),
                }
            }
            Err(source) => {
                unreachable += 1;
                if unreachable >= wait.max_unreachable.max(1) {
                    return Err(WaitError::Unreachable { port, source });
                }
                source.to_string()
            }
        };
        if started.elapsed() >= wait.timeout {
            return Err(WaitError::Timeout {
                port,
                seconds: wait.timeout.as_secs(),
                last,
            });
        }
        tokio::time::sleep(wait.every).await;
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use crate::fake::{AdminAnswer, FakeAdmin};
    use std::path::PathBuf;

    fn ok(body: &str) -> Response {
        Response {
            status: 200,
            body: body.into(),
        }
    }

    #[test]
    fn the_ports_of_active_listeners_are_read_from_envoys_answer() {
        // As Envoy 1.39 answers (two listeners, one of them twice as if in two statuses).
        let body = r#"{
 "listener_statuses": [
  {"name": "stats", "local_address": {"socket_address": {"address": "0.0.0.0", "port_value": 8900}}},
  {"name": "outbound", "local_address": {"socket_address": {"address": "0.0.0.0", "port_value": 15001}}},
  {"name": "dup", "local_address": {"socket_address": {"address": "::", "port_value": 15001}}}
 ]
}"#;
        assert_eq!(active_ports(&ok(body)).unwrap(), vec![8900, 15001]);
    }

    #[test]
    fn an_envoy_without_listeners_has_no_ports_and_garbage_is_an_error() {
        assert_eq!(active_ports(&ok("{}")).unwrap(), Vec::<u16>::new());
        assert_eq!(
            active_ports(&ok(r#"{"listener_statuses":[]}"#)).unwrap(),
            Vec::<u16>::new()
        );
        assert!(matches!(active_ports(&ok("LIVE")), Err(ListenersError::Json(_))));
        assert!(matches!(
            active_ports(&ok(r#"{"listener_statuses":3}"#)),
            Err(ListenersError::Json(_))
        ));
        let err = active_ports(&Response {
            status: 503,
            body: "PRE_INITIALIZING".into(),
        })
        .unwrap_err();
        assert_eq!(
            err,
            ListenersError::Status {
                status: 503,
                body: "PRE_INITIALIZING".into()
            }
        );
    }

    fn netns() -> PathBuf {
        PathBuf::from("/proc/4242/ns/net")
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_ends_as_soon_as_the_proxy_port_listens() {
        let admin = FakeAdmin::new();
        admin.script(
            &netns(),
            vec![
                AdminAnswer::Listeners(vec![]),
                AdminAnswer::Listeners(vec![8900]),
                AdminAnswer::Listeners(vec![8900, 15001]),
            ],
        );
        let wait = ListenerWait::default();
        let took = wait_for_listener(&admin, &netns(), 15001, &wait).await.unwrap();
        assert_eq!(took, 2 * wait.every);
        assert_eq!(admin.calls().len(), 3);
        assert_eq!(admin.calls()[0], (netns(), 15000, LISTENERS_PATH.to_string()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_sidecar_whose_listeners_never_arrive_times_out_naming_what_it_has() {
        let admin = FakeAdmin::new();
        admin.script(&netns(), vec![AdminAnswer::Listeners(vec![8900])]);
        let wait = ListenerWait {
            timeout: Duration::from_secs(5),
            ..ListenerWait::default()
        };
        let err = wait_for_listener(&admin, &netns(), 15001, &wait)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                err,
                WaitError::Timeout {
                    port: 15001,
                    seconds: 5,
                    ..
                }
            ),
            "{text}"
        );
        assert!(text.contains("[8900]") && text.contains("LDS"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_admin_that_stops_answering_ends_the_wait_early_but_one_failure_does_not() {
        let admin = FakeAdmin::new();
        admin.script(
            &netns(),
            vec![AdminAnswer::Down, AdminAnswer::Listeners(vec![15001])],
        );
        let wait = ListenerWait::default();
        assert!(wait_for_listener(&admin, &netns(), 15001, &wait).await.is_ok());

        admin.script(&netns(), vec![AdminAnswer::Down]);
        let started = Instant::now();
        let err = wait_for_listener(&admin, &netns(), 15001, &wait)
            .await
            .unwrap_err();
        assert!(matches!(err, WaitError::Unreachable { .. }), "{err}");
        assert!(
            started.elapsed() < wait.timeout / 10,
            "gave up early: {:?}",
            started.elapsed()
        );
    }
}
