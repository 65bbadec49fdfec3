//! ADS over HTTP/2 with responses written as prepared frames.
//!
//! tonic's generated server encodes every response into one per-stream `BytesMut` that keeps the
//! capacity of the largest message it ever encoded (the first full set of clusters or endpoint
//! assignments: hundreds of KB). With 1,000 streams that was most of the server's memory. Here a
//! stream task queues each response as two frames: its own small head (length prefix, version,
//! nonce, type) and the encoded resources, which are shared (`Bytes`) with every stream sending the
//! same resources (see [`crate::ResourceList`]): the first full push to 1,000 proxies holds one
//! encoding of the clusters, not 1,000. SotW requests are decoded by [`crate::request`] (names as
//! slices), delta requests by prost, both read by [`Inbound`], which keeps no buffer between
//! messages (tonic's `Streaming` kept one the size of the largest request per stream: an ACK
//! repeating 1,000 names is 20 KB, times 1,000 streams).

use std::convert::Infallible;
use std::future::Future;
use std::task::{Context, Poll};

use bytes::Bytes;
use bytes::BytesMut;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use http_body_util::StreamBody;
use prost::Message;
use std::collections::VecDeque;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::Status;

use crate::server::{StreamContext, XdsServer};

const SOTW_METHOD: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_METHOD: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Largest request accepted (an Envoy SotW request repeats every subscribed name).
const MAX_REQUEST: usize = 16 * 1024 * 1024;

/// The ADS gRPC service, ready for `tonic::transport::Server::add_service`.
#[derive(Clone, Debug)]
pub struct AdsService {
    server: XdsServer,
}

impl AdsService {
    pub(crate) fn new(server: XdsServer) -> Self {
        AdsService { server }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl tower_service::Service<Request<Body>> for AdsService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let peer = req
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|i| i.remote_addr())
            .or_else(|| {
                req.extensions()
                    .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
                    .and_then(|i| i.get_ref().remote_addr())
            });
        let authorization = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (end_tx, end_rx) = oneshot::channel();
        let ctx = StreamContext {
            peer,
            authorization,
            end: Some(end_tx),
        };
        let response = match req.uri().path() {
            SOTW_METHOD => {
                // Decoded by the stream task, which knows the name lists it was sent before.
                let inbound = Inbound::new(req.into_body(), Ok::<Bytes, prost::DecodeError>);
                grpc_response(self.server.start_sotw(inbound, ctx), end_rx)
            }
            DELTA_METHOD => {
                let inbound = Inbound::new(req.into_body(), |b: Bytes| DeltaDiscoveryRequest::decode(b));
                grpc_response(self.server.start_delta(inbound, ctx), end_rx)
            }
            _ => unimplemented_method(),
        };
        std::future::ready(Ok(response))
    }
}

/// The requests of one stream: length-prefixed gRPC messages read straight from the HTTP/2 body.
/// A message inside one DATA frame is a slice of it (no copy); one spanning frames is gathered into
/// a buffer of exactly its size. Nothing is kept between messages.
pub struct Inbound<T> {
    body: Body,
    decode: fn(Bytes) -> Result<T, prost::DecodeError>,
    /// Received bytes not yet consumed, in order.
    chunks: VecDeque<Bytes>,
    buffered: usize,
    ended: bool,
}

impl<T> Inbound<T> {
    pub fn new(body: Body, decode: fn(Bytes) -> Result<T, prost::DecodeError>) -> Self {
        Inbound {
            body,
            decode,
            chunks: VecDeque::new(),
            buffered: 0,
            ended: false,
        }
    }

    /// Copies the first `n` buffered bytes out (n <= buffered) without consuming them.
    fn peek(&self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        for c in &self.chunks {
            let take = (n - out.len()).min(c.len());
            out.extend_from_slice(&c[..take]);
            if out.len() == n {
                break;
            }
        }
        out
    }

    /// Consumes the next `n` buffered bytes (n <= buffered): a slice when one chunk holds them.
    fn take(&mut self, n: usize) -> Bytes {
        self.buffered -= n;
        if let Some(front) = self.chunks.front_mut() {
            if front.len() >= n {
                let out = front.split_to(n);
                if front.is_empty() {
                    self.chunks.pop_front();
                }
                return out;
            }
        }
        let mut out = BytesMut::with_capacity(n);
        while out.len() < n {
            let Some(mut front) = self.chunks.pop_front() else {
                break;
            };
            let need = n - out.len();
            if front.len() > need {
                out.extend_from_slice(&front.split_to(need));
                self.chunks.push_front(front);
            } else {
                out.extend_from_slice(&front);
            }
        }
        out.freeze()
    }

    /// The next complete message, if buffered.
    fn next_buffered(&mut self) -> Result<Option<Bytes>, Status> {
        if self.buffered < 5 {
            return Ok(None);
        }
        let head = self.peek(5);
        if head[0] != 0 {
            return Err(Status::unimplemented("compressed requests are not supported"));
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_REQUEST {
            return Err(Status::resource_exhausted(format!(
                "request of {len} bytes exceeds the limit of {MAX_REQUEST}"
            )));
        }
        if self.buffered < 5 + len {
            return Ok(None);
        }
        drop(self.take(5)); // the prefix
        Ok(Some(self.take(len)))
    }

    /// The next request, `None` when the proxy closed its side. Cancel-safe: everything received
    /// is kept in `self` between polls.
    pub async fn message(&mut self) -> Result<Option<T>, Status> {
        loop {
            if let Some(bytes) = self.next_buffered()? {
                return (self.decode)(bytes)
                    .map(Some)
                    .map_err(|e| Status::internal(format!("invalid request: {e}")));
            }
            if self.ended {
                return match self.buffered {
                    0 => Ok(None),
                    n => Err(Status::internal(format!(
                        "stream ended inside a message ({n} bytes)"
                    ))),
                };
            }
            match self.body.frame().await {
                None => self.ended = true,
                Some(Err(status)) => return Err(status),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            self.buffered += data.len();
                            self.chunks.push_back(data);
                        }
                    }
                }
            }
        }
    }
}

fn grpc_headers(headers: &mut HeaderMap) {
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
}

/// The trailers ending a stream: the status the stream task left in `end`, or OK.
struct Trailers(Option<oneshot::Receiver<Status>>);

impl tokio_stream::Stream for Trailers {
    type Item = Result<Frame<Bytes>, Infallible>;

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(rx) = self.0.as_mut() else {
            return Poll::Ready(None);
        };
        let status = match std::pin::Pin::new(rx).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(status)) => status,
            Poll::Ready(Err(_)) => Status::ok(""),
        };
        self.0 = None;
        let mut trailers = HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.insert("grpc-status", HeaderValue::from_static("13"));
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }
}

/// A streaming response: every frame the stream task queues (gRPC messages, possibly split into
/// several frames), then the trailers: `grpc-status: 0`, or the status the task set in `end`
/// (a refused stream: `UNAUTHENTICATED`, `PERMISSION_DENIED`).
fn grpc_response(rx: mpsc::Receiver<Bytes>, end: oneshot::Receiver<Status>) -> Response<Body> {
    let frames = ReceiverStream::new(rx)
        .map(|b| Ok::<_, Infallible>(Frame::data(b)))
        .chain(Trailers(Some(end)));
    let mut response = Response::new(Body::new(StreamBody::new(frames)));
    grpc_headers(response.headers_mut());
    response
}

fn unimplemented_method() -> Response<Body> {
    let mut response = Response::new(Body::empty());
    grpc_headers(response.headers_mut());
    response
        .headers_mut()
        .insert("grpc-status", HeaderValue::from_static("12"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(chunks: Vec<Vec<u8>>) -> Body {
        let frames = tokio_stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, Infallible>(Frame::data(Bytes::from(c)))),
        );
        Body::new(StreamBody::new(frames))
    }

    fn framed(msg: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        out.extend_from_slice(msg);
        out
    }

    #[tokio::test]
    async fn requests_are_read_whole_however_the_frames_split_them() {
        let (a, b, c) = (vec![1u8; 10], vec![2u8; 40_000], Vec::new());
        let mut all = [framed(&a), framed(&b), framed(&c)].concat();
        // Cut into uneven pieces: inside a prefix, inside a message, several messages in one.
        let mut chunks = Vec::new();
        for cut in [3, 9, 20_000, 40_012] {
            let rest = all.split_off(cut - chunks.iter().map(Vec::len).sum::<usize>());
            chunks.push(std::mem::replace(&mut all, rest));
        }
        chunks.push(all);
        let mut inbound = Inbound::new(body(chunks), |b: Bytes| Ok(b.to_vec()));
        assert_eq!(inbound.message().await.expect("a"), Some(a));
        assert_eq!(inbound.message().await.expect("b"), Some(b));
        assert_eq!(inbound.message().await.expect("c"), Some(c));
        assert_eq!(inbound.message().await.expect("end"), None);
    }

    #[tokio::test]
    async fn a_stream_ending_inside_a_request_or_a_compressed_request_is_an_error() {
        let mut cut = framed(&[7; 10]);
        cut.truncate(8);
        let mut inbound = Inbound::new(body(vec![cut]), |b: Bytes| Ok(b.to_vec()));
        assert!(inbound.message().await.is_err());
        let mut compressed = framed(&[7; 10]);
        compressed[0] = 1;
        let mut inbound = Inbound::new(body(vec![compressed]), |b: Bytes| Ok(b.to_vec()));
        assert!(inbound.message().await.is_err());
    }

    #[test]
    fn an_encoded_response_is_the_grpc_length_prefix_and_the_protobuf_encoding() {
        use crate::sotw::SotwResponse;
        use crate::ResourceList;
        use std::sync::Arc;
        use traffic_translate::snapshot::{ObjectRef, Resource};

        let resources = (0..3)
            .map(|i| {
                Arc::new(Resource {
                    name: format!("r{i}"),
                    body: envoy_types::pb::google::protobuf::Any {
                        type_url: crate::CLUSTER.into(),
                        value: vec![i; 100 * usize::from(i)],
                    },
                    version: i.to_string(),
                    origin: None::<ObjectRef>,
                })
            })
            .collect();
        let resp = SotwResponse {
            version_info: "v1".into(),
            type_url: crate::CLUSTER.into(),
            nonce: "7".into(),
            resources: Arc::new(ResourceList::new(resources)),
        };
        let encoded = resp.encode();
        let f: Vec<u8> = [&encoded.head[..], &encoded.body[..]].concat();
        let body = resp.to_message().encode_to_vec();
        assert_eq!(f[0], 0);
        assert_eq!(u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize, body.len());
        assert_eq!(
            envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse::decode(&f[5..])
                .expect("decode"),
            resp.to_message()
        );
        assert_eq!(f.len(), 5 + body.len());
    }
}
