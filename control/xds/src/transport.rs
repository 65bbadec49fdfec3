//! ADS over HTTP/2 with a response encoder that keeps no buffer between messages.
//!
//! tonic's generated server encodes every response into one per-stream `BytesMut` that keeps the
//! capacity of the largest message it ever encoded (the first full set of clusters or endpoint
//! assignments: hundreds of KB). With 1,000 streams that is most of the server's memory. Here each
//! response is encoded into its own exactly sized buffer, which is freed as soon as HTTP/2 has
//! written it. Requests are still decoded by tonic ([`Streaming`]).

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::StreamBody;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::body::Body;
use tonic::codec::{Codec, Streaming};
use tonic::server::NamedService;
use tonic_prost::ProstCodec;

use crate::server::XdsServer;

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
            .and_then(|i| i.remote_addr());
        let response = match req.uri().path() {
            SOTW_METHOD => {
                let inbound: Streaming<DiscoveryRequest> = Streaming::new_request(
                    ProstCodec::<DiscoveryResponse, DiscoveryRequest>::default().decoder(),
                    req.into_body(),
                    None,
                    Some(MAX_REQUEST),
                );
                grpc_response(self.server.start_sotw(inbound, peer))
            }
            DELTA_METHOD => {
                let inbound: Streaming<DeltaDiscoveryRequest> = Streaming::new_request(
                    ProstCodec::<DeltaDiscoveryResponse, DeltaDiscoveryRequest>::default().decoder(),
                    req.into_body(),
                    None,
                    Some(MAX_REQUEST),
                );
                grpc_response(self.server.start_delta(inbound, peer))
            }
            _ => unimplemented_method(),
        };
        std::future::ready(Ok(response))
    }
}

/// One length-prefixed gRPC message in a buffer of exactly its size.
pub(crate) fn frame<M: Message>(msg: &M) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0); // not compressed
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    msg.encode_raw(&mut buf);
    Bytes::from(buf)
}

fn grpc_headers(headers: &mut HeaderMap) {
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
}

/// A streaming response: every message the stream task queues, then `grpc-status: 0` when the
/// task ends.
fn grpc_response<M: Message + 'static>(rx: mpsc::Receiver<M>) -> Response<Body> {
    let done = {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        Frame::trailers(trailers)
    };
    let frames = ReceiverStream::new(rx)
        .map(|m| Ok::<_, Infallible>(Frame::data(frame(&m))))
        .chain(tokio_stream::once(Ok(done)));
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

    #[test]
    fn a_frame_is_the_grpc_length_prefix_and_the_protobuf_encoding() {
        let msg = DiscoveryResponse {
            version_info: "v1".into(),
            nonce: "7".into(),
            ..Default::default()
        };
        let f = frame(&msg);
        let body = msg.encode_to_vec();
        assert_eq!(f[0], 0);
        assert_eq!(u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize, body.len());
        assert_eq!(&f[5..], &body[..]);
        assert_eq!(f.len(), 5 + body.len());
    }
}
