//! Sidecar exits from containerd's event stream, so the agent restarts a sidecar (or takes its
//! redirect away) at once instead of at its next resync.
//!
//! The subscription is filtered to our namespace's `/tasks/exit` (without a filter containerd
//! sends every namespace's events); an exec'd process's exit has the same topic, so only exits
//! of a container's init process (`id == container_id`) count. Events are not replayed: after a
//! reconnect the agent's periodic resync catches what was missed.

use std::time::Duration;

use containerd_client::events::TaskExit;
use containerd_client::services::v1::SubscribeRequest;
use containerd_client::types::Envelope;
use containerd_client::Client;
use futures_util::StreamExt;
use prost::Message as _;
use tracing::{debug, warn};

use super::req;

pub const TOPIC_EXIT: &str = "/tasks/exit";
const TASK_EXIT_TYPE: &str = "containerd.events.TaskExit";

/// The subscription filter for exits in namespace `ns`.
pub fn exit_filter(ns: &str) -> String {
    format!("namespace=={ns},topic==\"{TOPIC_EXIT}\"")
}

/// The container id of an envelope that reports the exit of a container's init process in `ns`.
pub fn exited_container(envelope: &Envelope, ns: &str) -> Option<String> {
    if envelope.namespace != ns || envelope.topic != TOPIC_EXIT {
        return None;
    }
    let any = envelope.event.as_ref()?;
    if any.type_url.trim_start_matches('/') != TASK_EXIT_TYPE {
        return None;
    }
    let exit = TaskExit::decode(any.value.as_slice()).ok()?;
    (exit.id == exit.container_id && !exit.container_id.is_empty()).then_some(exit.container_id)
}

async fn forward(
    channel: containerd_client::tonic::transport::Channel,
    ns: String,
    tx: tokio::sync::mpsc::Sender<String>,
) {
    loop {
        let mut events = Client::from(channel.clone()).events();
        match events
            .subscribe(req(
                SubscribeRequest {
                    filters: vec![exit_filter(&ns)],
                },
                &ns,
                None,
            ))
            .await
        {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(env) => {
                            if let Some(id) = exited_container(&env, &ns) {
                                debug!(container = %id, "sidecar exited");
                                if tx.send(id).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            warn!(error = %e.message(), "containerd event stream failed; subscribing again");
                            break;
                        }
                    }
                }
            }
            Err(e) => warn!(error = %e.message(), "containerd event subscription failed; retrying"),
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The ids of our sidecars as they exit (see the module docs).
pub fn exits(
    channel: containerd_client::tonic::transport::Channel,
    ns: String,
) -> futures_util::stream::BoxStream<'static, String> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(forward(channel, ns, tx));
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|id| (id, rx))
    }))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn envelope(ns: &str, topic: &str, exit: TaskExit) -> Envelope {
        Envelope {
            namespace: ns.into(),
            topic: topic.into(),
            event: Some(prost_types::Any {
                type_url: TASK_EXIT_TYPE.into(),
                value: exit.encode_to_vec(),
            }),
            ..Default::default()
        }
    }

    fn exit(container: &str, id: &str) -> TaskExit {
        TaskExit {
            container_id: container.into(),
            id: id.into(),
            pid: 7,
            exit_status: 0,
            exited_at: None,
        }
    }

    #[test]
    fn an_init_process_exit_in_our_namespace_names_the_container() {
        let e = envelope("traffic-manager", TOPIC_EXIT, exit("c1", "c1"));
        assert_eq!(exited_container(&e, "traffic-manager").unwrap(), "c1");
    }

    #[test]
    fn exec_exits_other_namespaces_and_other_topics_are_ignored() {
        assert_eq!(
            exited_container(
                &envelope("traffic-manager", TOPIC_EXIT, exit("c1", "exec-1")),
                "traffic-manager"
            ),
            None
        );
        assert_eq!(
            exited_container(
                &envelope("k8s.io", TOPIC_EXIT, exit("c1", "c1")),
                "traffic-manager"
            ),
            None
        );
        assert_eq!(
            exited_container(
                &envelope("traffic-manager", "/tasks/start", exit("c1", "c1")),
                "traffic-manager"
            ),
            None
        );
        let mut garbage = envelope("traffic-manager", TOPIC_EXIT, exit("c1", "c1"));
        garbage.event.as_mut().unwrap().value = vec![0xff, 0xff];
        assert_eq!(exited_container(&garbage, "traffic-manager"), None);
        assert_eq!(
            exit_filter("traffic-manager"),
            r#"namespace==traffic-manager,topic=="/tasks/exit""#
        );
    }
}
