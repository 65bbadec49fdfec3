//! Builders for small but real Envoy resources (go-control-plane's `pkg/test/resource` habit).

use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::{Any, Duration};
use prost::{Message, Name};
use traffic_translate::snapshot::{NodeResources, ObjectRef, Resource, CLUSTER, ENDPOINT, LISTENER, ROUTE};

fn hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

pub fn resource<M: Message + Name>(name: &str, msg: &M, origin: Option<ObjectRef>) -> Arc<Resource> {
    let value = msg.encode_to_vec();
    Arc::new(Resource {
        name: name.to_string(),
        version: hash(&value),
        body: Any {
            type_url: M::type_url(),
            value,
        },
        origin,
    })
}

pub fn service_ref(name: &str) -> Option<ObjectRef> {
    Some(ObjectRef {
        kind: "Service".into(),
        namespace: "default".into(),
        name: name.into(),
    })
}

/// A cluster whose content varies with `generation` (its connect timeout in seconds).
pub fn cluster(name: &str, generation: i64) -> Arc<Resource> {
    let c = Cluster {
        name: name.to_string(),
        connect_timeout: Some(Duration {
            seconds: generation,
            nanos: 0,
        }),
        ..Default::default()
    };
    resource(name, &c, service_ref(name))
}

pub fn endpoints(name: &str, generation: u32) -> Arc<Resource> {
    let cla = ClusterLoadAssignment {
        cluster_name: name.to_string(),
        policy: Some(
            envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy {
                overprovisioning_factor: Some(envoy_types::pb::google::protobuf::UInt32Value {
                    value: 100 + generation,
                }),
                ..Default::default()
            },
        ),
        ..Default::default()
    };
    resource(name, &cla, service_ref(name))
}

pub fn listener(name: &str, generation: u32) -> Arc<Resource> {
    let l = Listener {
        name: name.to_string(),
        per_connection_buffer_limit_bytes: Some(envoy_types::pb::google::protobuf::UInt32Value {
            value: 1024 + generation,
        }),
        ..Default::default()
    };
    resource(name, &l, None)
}

pub fn route(name: &str, generation: u32) -> Arc<Resource> {
    let r = RouteConfiguration {
        name: name.to_string(),
        max_direct_response_body_size_bytes: Some(envoy_types::pb::google::protobuf::UInt32Value {
            value: 1024 + generation,
        }),
        ..Default::default()
    };
    resource(name, &r, None)
}

/// The name inside an encoded resource of one of the four types.
pub fn name_of(any: &Any) -> String {
    let v = any.value.as_slice();
    match any.type_url.as_str() {
        CLUSTER => Cluster::decode(v).map(|c| c.name).unwrap_or_default(),
        ENDPOINT => ClusterLoadAssignment::decode(v)
            .map(|c| c.cluster_name)
            .unwrap_or_default(),
        LISTENER => Listener::decode(v).map(|c| c.name).unwrap_or_default(),
        ROUTE => RouteConfiguration::decode(v).map(|c| c.name).unwrap_or_default(),
        other => panic!("unexpected type {other}"),
    }
}

/// Builds node resources from a list of resources.
pub fn node(items: impl IntoIterator<Item = Arc<Resource>>) -> NodeResources {
    let mut nr = NodeResources::default();
    for r in items {
        let t: &'static str = match r.body.type_url.as_str() {
            CLUSTER => CLUSTER,
            ENDPOINT => ENDPOINT,
            LISTENER => LISTENER,
            ROUTE => ROUTE,
            other => panic!("unexpected type {other}"),
        };
        nr.make_mut(t).insert(r.name.clone(), r);
    }
    nr
}

/// The name inside an encoded resource of any type the tests use (secrets too).
pub fn name_of_any(any: &Any) -> String {
    if any.type_url == traffic_translate::snapshot::SECRET {
        return envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret::decode(
            any.value.as_slice(),
        )
        .map(|s| s.name)
        .unwrap_or_default();
    }
    name_of(any)
}
