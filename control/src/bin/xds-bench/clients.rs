//! The bench's in-process ADS clients: each subscribes to everything, ACKs every response like
//! Envoy, reports when it saw an endpoint update after its initial sync, and counts the bytes of
//! every response it got (the protobuf message plus gRPC's 5-byte frame header: what the server
//! wrote for it, before HTTP/2 framing), so the bench can report bytes sent per change.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use traffic_translate::snapshot::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

use crate::auth::{self, Dial};

/// gRPC's length-prefixed message header.
const GRPC_FRAME_HEADER: u64 = 5;

/// Bytes of every response every client received so far.
pub static RECEIVED_BYTES: AtomicU64 = AtomicU64::new(0);

fn count(encoded_len: usize) {
    RECEIVED_BYTES.fetch_add(encoded_len as u64 + GRPC_FRAME_HEADER, Ordering::Relaxed);
}

/// What a client reports: its stream index and when it saw an endpoint update.
pub type Seen = (usize, Instant);

/// The bench's SotW client codec: requests go out pre-encoded. An ACK repeats every subscribed
/// name (1,000 endpoint names, like Envoy); building them as a fresh `Vec<String>` per ACK per
/// stream cost the bench process as much CPU as the server it measures, on the same two cores.
/// The name list is encoded once and shared; the bytes on the wire are the same.
#[derive(Debug, Clone, Copy, Default)]
pub struct PreEncoded;

impl tonic::codec::Codec for PreEncoded {
    type Encode = [bytes::Bytes; 2];
    type Decode = DiscoveryResponse;
    type Encoder = PreEncoded;
    type Decoder = tonic_prost::ProstDecoder<DiscoveryResponse>;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstCodec::<DiscoveryRequest, DiscoveryResponse>::default().decoder()
    }
}

impl tonic::codec::Encoder for PreEncoded {
    type Item = [bytes::Bytes; 2];
    type Error = tonic::Status;

    fn encode(&mut self, item: Self::Item, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Self::Error> {
        use bytes::BufMut;
        for part in item {
            dst.put(part);
        }
        Ok(())
    }
}

/// A `DiscoveryRequest` as [`PreEncoded`] sends it: `fields` plus the shared encoded `names`.
fn pre_encoded(fields: &DiscoveryRequest, names: &bytes::Bytes) -> [bytes::Bytes; 2] {
    [bytes::Bytes::from(fields.encode_to_vec()), names.clone()]
}

/// Field 3 (`resource_names`) of a `DiscoveryRequest`, encoded.
pub fn encoded_names(names: &[String]) -> bytes::Bytes {
    let mut buf = Vec::new();
    prost::encoding::string::encode_repeated(3, names, &mut buf);
    bytes::Bytes::from(buf)
}

/// A channel to `url`, over TLS when `dial` says so.
async fn connect(url: String, dial: Option<&Dial>) -> anyhow::Result<tonic::transport::Channel> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url)?;
    if let Some(d) = dial {
        endpoint = endpoint.tls_config(d.tls.clone())?;
    }
    Ok(endpoint.connect().await?)
}

/// The stream's request, with client `id`'s token when the server authenticates.
fn request<T>(inner: T, dial: Option<&Dial>, id: usize) -> anyhow::Result<tonic::Request<T>> {
    let r = tonic::Request::new(inner);
    match dial {
        Some(_) => auth::with_token(r, id),
        None => Ok(r),
    }
}

pub async fn sotw_client(
    url: String,
    dial: Option<Dial>,
    id: usize,
    clusters: bytes::Bytes,
    routes: bytes::Bytes,
    ready: mpsc::Sender<usize>,
    seen: mpsc::UnboundedSender<Seen>,
) -> anyhow::Result<()> {
    let channel = connect(url, dial.as_ref()).await?;
    // Like Envoy, no 4 MB cap on a response: SotW CDS at 10k services is ~6 MB.
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
    grpc.ready().await?;
    let (tx, rx) = mpsc::channel(16);
    let node = Some(Node {
        id: format!("bench{id}.default"),
        ..Default::default()
    });
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
    );
    let mut inbound = grpc
        .streaming(
            request(ReceiverStream::new(rx), dial.as_ref(), id)?,
            path,
            PreEncoded,
        )
        .await?
        .into_inner();
    let empty = bytes::Bytes::new();
    let names = |t: &str| -> &bytes::Bytes {
        match t {
            ENDPOINT => &clusters,
            ROUTE => &routes,
            _ => &empty,
        }
    };
    for t in [CLUSTER, ENDPOINT, LISTENER, ROUTE] {
        let fields = DiscoveryRequest {
            node: node.clone(),
            type_url: t.into(),
            ..Default::default()
        };
        tx.send(pre_encoded(&fields, names(t))).await?;
    }
    let mut initial = 4;
    while let Some(resp) = inbound.message().await? {
        count(resp.encoded_len());
        if resp.type_url == ENDPOINT && initial == 0 {
            let _ = seen.send((id, Instant::now()));
        }
        let fields = DiscoveryRequest {
            type_url: resp.type_url.clone(),
            version_info: resp.version_info.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        };
        tx.send(pre_encoded(&fields, names(&resp.type_url))).await?;
        if initial > 0 {
            initial -= 1;
            if initial == 0 {
                ready.send(id).await?;
            }
        }
    }
    Ok(())
}

pub async fn delta_client(
    url: String,
    dial: Option<Dial>,
    id: usize,
    clusters: Vec<String>,
    routes: Vec<String>,
    ready: mpsc::Sender<usize>,
    seen: mpsc::UnboundedSender<Seen>,
) -> anyhow::Result<()> {
    let mut client = AggregatedDiscoveryServiceClient::new(connect(url, dial.as_ref()).await?)
        .max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel(16);
    let node = Some(Node {
        id: format!("bench{id}.default"),
        ..Default::default()
    });
    let mut inbound = client
        .delta_aggregated_resources(request(ReceiverStream::new(rx), dial.as_ref(), id)?)
        .await?
        .into_inner();
    for (t, names) in [
        (CLUSTER, vec![]),
        (ENDPOINT, clusters),
        (LISTENER, vec![]),
        (ROUTE, routes),
    ] {
        tx.send(DeltaDiscoveryRequest {
            node: node.clone(),
            type_url: t.into(),
            resource_names_subscribe: names,
            ..Default::default()
        })
        .await?;
    }
    let mut initial = 4;
    while let Some(resp) = inbound.message().await? {
        count(resp.encoded_len());
        if resp.type_url == ENDPOINT && initial == 0 {
            let _ = seen.send((id, Instant::now()));
        }
        tx.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        })
        .await?;
        if initial > 0 {
            initial -= 1;
            if initial == 0 {
                ready.send(id).await?;
            }
        }
    }
    Ok(())
}
