//! ADS over HTTP/2 with responses written as prepared frames.
//!
//! tonic's generated server encodes every response into one per-stream `BytesMut` that keeps the
//! capacity of the largest message it ever encoded (the first full set of clusters or endpoint
//! assignments: hundreds of KB). With 1,000 streams that was most of the server's memory. Here a
//! stream task queues each response as two frames: its own small head (length prefix, version,
//! nonce, type) and the encoded resources, which are shared (`Bytes`) with every stream sending the
//! same resources (see [`crate::ResourceList`]): the first full push to 1,000 proxies holds one
//! encoding of the clusters, not 1,000. SotW requests are decoded by [`crate::request`] (names as
//! slices), delta requests by tonic's prost decoder ([`Streaming`]).

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::StreamBody;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::body::Body;
use tonic::codec::{Codec, Streaming};
use tonic::server::NamedService;
use tonic_prost::ProstCodec;

use crate::request::{SotwRequest, SotwRequestDecoder};
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
                let inbound: Streaming<SotwRequest> =
                    Streaming::new_request(SotwRequestDecoder, req.into_body(), None, Some(MAX_REQUEST));
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

fn grpc_headers(headers: &mut HeaderMap) {
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
}

/// A streaming response: every frame the stream task queues (gRPC messages, possibly split into
/// several frames), then `grpc-status: 0` when the task ends.
fn grpc_response(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let done = {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        Frame::trailers(trailers)
    };
    let frames = ReceiverStream::new(rx)
        .map(|b| Ok::<_, Infallible>(Frame::data(b)))
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
    use prost::Message;

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
