//! gRPC plumbing: one task per ADS stream, driven by the proxy's requests and by new snapshots.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, info_span, warn, Instrument};
use traffic_translate::snapshot::MeshSnapshot;

use crate::admission::{Admission, Admit, Credentials};
use crate::delta::{DeltaResponse, DeltaStream};
use crate::metrics::{Mode, ModeLabels, ReasonLabels, TypeLabels, XdsMetrics};
use crate::quarantine::Verdict;
use crate::rejection::{Rejection, RejectionSink};
use crate::request::decode_sotw_with;
use crate::sotw::{SotwResponse, SotwStream};
use crate::transport::{AdsService, Inbound};
use crate::{type_name, NameSets, View};

mod published;
mod stream_metrics;
use published::Published;
use stream_metrics::{AckTimer, Connected, QuarantineGauge};

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum XdsServerError {
    #[error("the xDS server must be created inside a Tokio runtime")]
    NoRuntime,
    #[error("xDS gRPC transport failed")]
    Transport(#[source] tonic::transport::Error),
}

/// Frames queued per stream before the stream task waits for the proxy to read (a response is
/// one or two frames).
const STREAM_QUEUE: usize = 16;

/// Largest HTTP/2 frame proxies may send (advertised in SETTINGS; the default is 16 KB). A SotW
/// ACK repeats every subscribed name (1,000 endpoint names: 20 KB); in one frame it is read as a
/// slice of that frame instead of being gathered from two into a new buffer per ACK per stream
/// (xds-bench, 1,000 streams: RSS after ten changes 125 -> 101 MB, less CPU on both sides).
const MAX_FRAME: u32 = 64 * 1024;

struct Shared {
    published: watch::Receiver<Published>,
    names: Arc<NameSets>,
    metrics: XdsMetrics,
    sink: Arc<dyn RejectionSink>,
    /// `None`: every stream is served (authentication off).
    admit: Option<Arc<dyn Admit>>,
}

/// What the transport knows about a stream before its first request.
pub(crate) struct StreamContext {
    pub peer: Option<SocketAddr>,
    /// The `authorization` metadata.
    pub authorization: Option<String>,
    /// The stream's final status, if not OK (sent before the stream task ends).
    pub end: Option<oneshot::Sender<tonic::Status>>,
}

/// The ADS service. Cheap to clone.
#[derive(Clone)]
pub struct XdsServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for XdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsServer")
            .field("generation", &self.shared.published.borrow().generation)
            .finish()
    }
}

impl XdsServer {
    /// A server pushing whatever `snapshots` holds. Must be called inside a Tokio runtime: it
    /// spawns the task that numbers and timestamps each new snapshot.
    pub fn new(
        snapshots: watch::Receiver<Arc<dyn MeshSnapshot>>,
        metrics: XdsMetrics,
        sink: Arc<dyn RejectionSink>,
    ) -> Result<Self, XdsServerError> {
        Self::with_admission(snapshots, metrics, sink, None)
    }

    /// Like [`XdsServer::new`], serving only the streams `admit` admits (`None`: every stream).
    pub fn with_admission(
        mut snapshots: watch::Receiver<Arc<dyn MeshSnapshot>>,
        metrics: XdsMetrics,
        sink: Arc<dyn RejectionSink>,
        admit: Option<Arc<dyn Admit>>,
    ) -> Result<Self, XdsServerError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| XdsServerError::NoRuntime)?;
        let first = Published::new(snapshots.borrow_and_update().clone(), 1, None);
        let (tx, rx) = watch::channel(first);
        handle.spawn(
            async move {
                let mut generation = 1;
                while snapshots.changed().await.is_ok() {
                    generation += 1;
                    let snapshot = snapshots.borrow_and_update().clone();
                    debug!(generation, "new snapshot");
                    let next = Published::new(snapshot, generation, Some(&tx.borrow()));
                    if tx.send(next).is_err() {
                        break;
                    }
                }
                debug!("snapshot source closed; streams keep the last snapshot");
            }
            .instrument(info_span!("xds_snapshots")),
        );
        Ok(XdsServer {
            shared: Arc::new(Shared {
                published: rx,
                names: Arc::default(),
                metrics,
                sink,
                admit,
            }),
        })
    }

    /// The gRPC service, ready for `tonic::transport::Server::add_service`.
    pub fn into_service(self) -> AdsService {
        AdsService::new(self)
    }

    /// Starts the task serving one SotW stream; its responses come out of the returned channel.
    pub(crate) fn start_sotw(&self, inbound: Inbound<Bytes>, ctx: StreamContext) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let span = info_span!("ads", mode = "sotw", peer = ?ctx.peer, node = tracing::field::Empty);
        tokio::spawn(run_sotw(self.shared.clone(), inbound, tx, ctx).instrument(span));
        rx
    }

    /// Starts the task serving one delta stream; its responses come out of the returned channel.
    pub(crate) fn start_delta(
        &self,
        inbound: Inbound<DeltaDiscoveryRequest>,
        ctx: StreamContext,
    ) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let span = info_span!("ads", mode = "delta", peer = ?ctx.peer, node = tracing::field::Empty);
        tokio::spawn(run_delta(self.shared.clone(), inbound, tx, ctx).instrument(span));
        rx
    }

    /// Serves ADS on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), XdsServerError> {
        self.serve_tls(listener, None, shutdown).await
    }

    /// Serves ADS on `listener` until `shutdown` completes, over TLS with `identity` (certificate
    /// chain and key, PEM) if given, else plaintext.
    pub async fn serve_tls(
        self,
        listener: tokio::net::TcpListener,
        identity: Option<(String, String)>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), XdsServerError> {
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut builder = tonic::transport::Server::builder();
        if let Some((cert, key)) = identity {
            let tls = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(cert, key));
            builder = builder.tls_config(tls).map_err(XdsServerError::Transport)?;
        }
        builder
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .max_frame_size(Some(MAX_FRAME))
            .add_service(self.into_service())
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(XdsServerError::Transport)
    }
}

fn node_id(node: &Option<Node>) -> Option<String> {
    node.as_ref().map(|n| n.id.clone())
}

/// What a request said about the previous response, whatever the protocol variant.
struct Answer<'a> {
    /// It answered an older response than the last one sent.
    stale: bool,
    /// The nonce it acknowledged.
    acked: Option<&'a str>,
    rejection: Option<&'a Rejection>,
}

impl Shared {
    /// Counts a request's answer (stale, ACK with its latency, NACK reported).
    fn account_request(
        &self,
        mode: Mode,
        node: &str,
        type_url: &str,
        timer: &mut AckTimer,
        answer: Answer<'_>,
    ) {
        let labels = TypeLabels::new(mode, type_url);
        if answer.stale {
            self.metrics.stale_requests.get_or_create(&labels).inc();
        }
        if let Some(nonce) = answer.acked {
            timer.acked(&self.metrics, nonce);
            self.metrics.acks.get_or_create(&labels).inc();
        }
        if let Some(rejection) = answer.rejection {
            self.report_rejection(mode, node, rejection);
        }
    }

    fn report_rejection(&self, mode: Mode, node: &str, rejection: &Rejection) {
        let labels = TypeLabels::new(mode, &rejection.type_url);
        self.metrics.nacks.get_or_create(&labels).inc();
        if rejection.stale {
            self.metrics.stale_nacks.get_or_create(&labels).inc();
        }
        let r#type = type_name(&rejection.type_url);
        let resources = rejection.resource_names();
        let (nonce, stale, message) = (&rejection.nonce, rejection.stale, &rejection.message);
        match &rejection.verdict {
            Verdict::Quarantined(rejected) => {
                warn!(
                    node, r#type, ?resources, nonce, stale, %message,
                    "proxy rejected these resources; keeping them out of its configuration until they change"
                );
                self.metrics
                    .rejected_resources
                    .get_or_create(&labels)
                    .inc_by(rejected.len() as u64);
                self.sink
                    .rejected(node, &rejection.type_url, rejected, &rejection.message);
            }
            Verdict::Narrowing(_) => info!(
                node, r#type, suspects = ?resources, nonce, stale, %message,
                "proxy rejected a response; sending subsets of it to find the rejected resource"
            ),
            Verdict::Explained(_) => debug!(
                node,
                r#type,
                ?resources,
                nonce,
                stale,
                "proxy rejected a response carrying resources already kept out"
            ),
            Verdict::Unexplained => warn!(
                node, r#type, nonce, stale, %message,
                "proxy rejected a response that introduced no new resource; keeping it on its last accepted version"
            ),
        }
    }

    fn count_push(&self, mode: Mode, type_url: &str, resources: usize) {
        let labels = TypeLabels::new(mode, type_url);
        self.metrics.pushes.get_or_create(&labels).inc();
        self.metrics
            .pushed_resources
            .get_or_create(&labels)
            .inc_by(resources as u64);
    }

    fn node_resources(&self, published: &Published, node: &str, admission: &Admission) -> Arc<View> {
        published.view(node, admission.secrets)
    }

    /// Asks the admission hook about a stream whose first request names `node`. On a refusal the
    /// stream's final status is set, the refusal logged and counted, and `None` returned: the
    /// caller ends the stream without sending anything.
    async fn admit(&self, ctx: &mut StreamContext, node: &str) -> Option<Admission> {
        let Some(admit) = &self.admit else {
            return Some(Admission::anyone());
        };
        let credentials = Credentials {
            authorization: ctx.authorization.as_deref(),
            peer: ctx.peer,
            node_id: node,
        };
        match admit.admit(credentials).await {
            Ok(admission) => {
                info!(node, identity = %admission.identity, secrets = admission.secrets, "stream admitted");
                self.metrics.auth_admissions.inc();
                Some(admission)
            }
            Err(refusal) => {
                warn!(
                    node, peer = ?ctx.peer, reason = refusal.reason, message = %refusal.message,
                    "stream refused: nothing is served"
                );
                self.metrics
                    .auth_refusals
                    .get_or_create(&ReasonLabels {
                        reason: refusal.reason.to_string(),
                    })
                    .inc();
                if let Some(end) = ctx.end.take() {
                    let _ = end.send(refusal.status());
                }
                None
            }
        }
    }
}

impl Shared {
    /// Ends an admitted stream whose token expired: `UNAUTHENTICATED`, a log line, a count. The
    /// client keeps its configuration and reconnects with its renewed token.
    fn end_expired(&self, ctx: &mut StreamContext, node: &str) {
        info!(
            node,
            "token expired: stream ended (UNAUTHENTICATED) for the client to reconnect with a renewed one"
        );
        self.metrics.auth_expired.inc();
        if let Some(end) = ctx.end.take() {
            let _ = end.send(tonic::Status::unauthenticated(
                "the token this stream was admitted with has expired",
            ));
        }
    }
}

/// When an admitted stream's credentials expire.
type Expiry = Option<std::pin::Pin<Box<tokio::time::Sleep>>>;

fn expiry_of(admission: &Admission) -> Expiry {
    admission
        .remaining(std::time::SystemTime::now())
        .map(|d| Box::pin(tokio::time::sleep(d)))
}

/// Completes when `expiry` passes; never without one.
async fn expired(expiry: &mut Expiry) {
    match expiry {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

type FrameSender = mpsc::Sender<Bytes>;

async fn run_sotw(shared: Arc<Shared>, mut inbound: Inbound<Bytes>, tx: FrameSender, mut ctx: StreamContext) {
    const MODE: Mode = Mode::Sotw;
    let _connected = Connected::new(&shared.metrics, MODE);
    let mut published = shared.published.clone();
    let mut snapshots_live = true;
    let mut state = SotwStream::with_name_sets(shared.names.clone());
    let mut node: Option<String> = None;
    let mut admission = Admission::anyone();
    let mut expiry: Expiry = None;
    let mut timer = AckTimer::default();
    let mut quarantined = QuarantineGauge::new(&shared.metrics, MODE);
    loop {
        tokio::select! {
            () = expired(&mut expiry) => {
                shared.end_expired(&mut ctx, node.as_deref().unwrap_or_default());
                return;
            }
            req = inbound.message() => {
                let req = match req.and_then(|r| r.map(|bytes| decode_sotw_with(bytes, state.known_names())
                    .map_err(|e| tonic::Status::internal(format!("invalid request: {e}")))).transpose()) {
                    Ok(Some(req)) => req,
                    Ok(None) => break,
                    Err(status) => {
                        debug!(%status, "stream ended");
                        shared.metrics.stream_errors.get_or_create(&ModeLabels { mode: Mode::Sotw }).inc();
                        break;
                    }
                };
                if node.is_none() {
                    let id = node_id(&req.message.node).unwrap_or_default();
                    tracing::Span::current().record("node", id.as_str());
                    info!(node = %id, "proxy connected");
                    match shared.admit(&mut ctx, &id).await {
                        Some(a) => admission = a,
                        None => return,
                    }
                    expiry = expiry_of(&admission);
                    let p = published.borrow_and_update().clone();
                    // No type is subscribed yet, so this sends nothing.
                    state.on_resources(shared.node_resources(&p, &id, &admission));
                    node = Some(id);
                }
                let node = node.as_deref().unwrap_or_default();
                let out = state.on_request(&req);
                let names = req.names.len();
                let req = req.message;
                debug!(
                    r#type = type_name(&req.type_url),
                    nonce = %req.response_nonce,
                    version = %req.version_info,
                    names,
                    stale = out.stale,
                    nack = out.rejection.is_some(),
                    "request"
                );
                shared.account_request(MODE, node, &req.type_url, &mut timer, Answer {
                    stale: out.stale,
                    acked: out.acked.as_deref(),
                    rejection: out.rejection.as_ref(),
                });
                quarantined.update(state.quarantined());
                for resp in out.responses {
                    if !send_sotw(&shared, &tx, &mut timer, resp).await {
                        return;
                    }
                }
            }
            changed = published.changed(), if snapshots_live && node.is_some() => {
                if changed.is_err() {
                    snapshots_live = false;
                    continue;
                }
                let p = published.borrow_and_update().clone();
                let resources = shared.node_resources(&p, node.as_deref().unwrap_or_default(), &admission);
                let responses = state.on_resources(resources);
                quarantined.update(state.quarantined());
                let n = responses.len();
                for resp in responses {
                    if !send_sotw(&shared, &tx, &mut timer, resp).await {
                        return;
                    }
                }
                if n > 0 {
                    shared.metrics.push_latency.observe(p.at.elapsed().as_secs_f64());
                }
            }
        }
    }
    info!(node = node.as_deref().unwrap_or_default(), "proxy disconnected");
}

async fn send_sotw(shared: &Shared, tx: &FrameSender, timer: &mut AckTimer, resp: SotwResponse) -> bool {
    debug!(
        r#type = type_name(&resp.type_url),
        version = %resp.version_info,
        nonce = %resp.nonce,
        resources = resp.resources.len(),
        "push"
    );
    shared.count_push(Mode::Sotw, &resp.type_url, resp.resources.len());
    timer.sent(&resp.nonce);
    let encoded = resp.encode();
    drop(resp);
    if tx.send(encoded.head).await.is_err() {
        return false;
    }
    encoded.body.is_empty() || tx.send(encoded.body).await.is_ok()
}

async fn run_delta(
    shared: Arc<Shared>,
    mut inbound: Inbound<DeltaDiscoveryRequest>,
    tx: FrameSender,
    mut ctx: StreamContext,
) {
    const MODE: Mode = Mode::Delta;
    let _connected = Connected::new(&shared.metrics, MODE);
    let mut published = shared.published.clone();
    let mut snapshots_live = true;
    let mut state = DeltaStream::with_name_sets(shared.names.clone());
    let mut node: Option<String> = None;
    let mut admission = Admission::anyone();
    let mut expiry: Expiry = None;
    let mut timer = AckTimer::default();
    let mut quarantined = QuarantineGauge::new(&shared.metrics, MODE);
    loop {
        tokio::select! {
            () = expired(&mut expiry) => {
                shared.end_expired(&mut ctx, node.as_deref().unwrap_or_default());
                return;
            }
            req = inbound.message() => {
                let req = match req {
                    Ok(Some(req)) => req,
                    Ok(None) => break,
                    Err(status) => {
                        debug!(%status, "stream ended");
                        shared.metrics.stream_errors.get_or_create(&ModeLabels { mode: Mode::Delta }).inc();
                        break;
                    }
                };
                if node.is_none() {
                    let id = node_id(&req.node).unwrap_or_default();
                    tracing::Span::current().record("node", id.as_str());
                    info!(node = %id, "proxy connected");
                    match shared.admit(&mut ctx, &id).await {
                        Some(a) => admission = a,
                        None => return,
                    }
                    expiry = expiry_of(&admission);
                    let p = published.borrow_and_update().clone();
                    state.on_resources(shared.node_resources(&p, &id, &admission), p.generation);
                    node = Some(id);
                }
                let node = node.as_deref().unwrap_or_default();
                let out = state.on_request(&req);
                debug!(
                    r#type = type_name(&req.type_url),
                    nonce = %req.response_nonce,
                    subscribe = req.resource_names_subscribe.len(),
                    unsubscribe = req.resource_names_unsubscribe.len(),
                    initial = req.initial_resource_versions.len(),
                    stale = out.stale,
                    nack = out.rejection.is_some(),
                    "delta request"
                );
                shared.account_request(MODE, node, &req.type_url, &mut timer, Answer {
                    stale: out.stale,
                    acked: out.acked.as_deref(),
                    rejection: out.rejection.as_ref(),
                });
                quarantined.update(state.quarantined());
                for resp in out.responses {
                    if !send_delta(&shared, &tx, &mut timer, resp).await {
                        return;
                    }
                }
            }
            changed = published.changed(), if snapshots_live && node.is_some() => {
                if changed.is_err() {
                    snapshots_live = false;
                    continue;
                }
                let p = published.borrow_and_update().clone();
                let resources = shared.node_resources(&p, node.as_deref().unwrap_or_default(), &admission);
                let responses = state.on_resources(resources, p.generation);
                quarantined.update(state.quarantined());
                let n = responses.len();
                for resp in responses {
                    if !send_delta(&shared, &tx, &mut timer, resp).await {
                        return;
                    }
                }
                if n > 0 {
                    shared.metrics.push_latency.observe(p.at.elapsed().as_secs_f64());
                }
            }
        }
    }
    info!(node = node.as_deref().unwrap_or_default(), "proxy disconnected");
}

async fn send_delta(shared: &Shared, tx: &FrameSender, timer: &mut AckTimer, resp: DeltaResponse) -> bool {
    debug!(
        r#type = type_name(&resp.type_url),
        nonce = %resp.nonce,
        updated = resp.resources.len(),
        removed = resp.removed_resources.len(),
        "delta push"
    );
    shared.count_push(
        Mode::Delta,
        &resp.type_url,
        resp.resources.len() + resp.removed_resources.len(),
    );
    timer.sent(&resp.nonce);
    let encoded = resp.encode();
    drop(resp);
    if tx.send(encoded.head).await.is_err() {
        return false;
    }
    encoded.body.is_empty() || tx.send(encoded.body).await.is_ok()
}
