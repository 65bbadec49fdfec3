//! Small builders for Envoy v3 protobuf values and the extension names Envoy knows them by.

use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, socket_address, Address, AggregatedConfigSource, ApiVersion, CidrRange,
    ConfigSource, SocketAddress,
};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use prost::{Message, Name};

use crate::snapshot::ObjectRef;
use crate::snapshot::Resource;

/// Extension names (the `name` field next to a `typed_config`).
pub mod names {
    pub const ORIGINAL_DST: &str = "envoy.filters.listener.original_dst";
    pub const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
    /// The DNS cluster extension (STRICT_DNS, or LOGICAL_DNS with `all_addresses_in_single_endpoint`).
    pub const DNS_CLUSTER: &str = "envoy.clusters.dns";
    pub const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";
    pub const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
    pub const ROUTER: &str = "envoy.filters.http.router";
    pub const FAULT: &str = "envoy.filters.http.fault";
    pub const BANDWIDTH_LIMIT: &str = "envoy.filters.http.bandwidth_limit";
    pub const ZIPKIN: &str = "envoy.tracers.zipkin";
    pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
    /// Key of a cluster's `typed_extension_protocol_options` for HTTP upstream options.
    pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
}

/// Pack a message into an `Any` with its real type URL.
pub fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// Wrap a message as a named, versioned xDS resource.
pub fn resource<M: Message + Name>(name: &str, m: &M, origin: Option<ObjectRef>) -> Resource {
    let body = any(m);
    let version = content_version(&body);
    Resource {
        name: name.to_string(),
        body,
        version,
        origin,
    }
}

/// The resource version: FNV-1a 64 of type URL and encoded bytes, hex. Stable across processes
/// and Rust versions (unlike `DefaultHasher`), so a restarted control plane reports the same
/// versions for the same config.
pub fn content_version(body: &Any) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in body
        .type_url
        .as_bytes()
        .iter()
        .chain([0u8].iter())
        .chain(body.value.iter())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    format!("{h:016x}")
}

pub fn duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub fn u32_value(v: u32) -> UInt32Value {
    UInt32Value { value: v }
}

pub fn socket_address(ip: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

pub fn cidr(ip: IpAddr) -> CidrRange {
    CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(u32_value(if ip.is_ipv4() { 32 } else { 128 })),
    }
}

/// "Fetch this over the same ADS stream", API v3.
pub fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

/// A percentage as the coarsest exact `FractionalPercent`: 50 -> 50/100, 12.5 -> 1250/10000,
/// 0.0001 -> 1/1000000.
pub fn fractional_percent(p: traffic_labels::Percent) -> FractionalPercent {
    let ppm = p.ppm();
    if ppm.is_multiple_of(10_000) {
        FractionalPercent {
            numerator: ppm / 10_000,
            denominator: DenominatorType::Hundred as i32,
        }
    } else if ppm.is_multiple_of(100) {
        FractionalPercent {
            numerator: ppm / 100,
            denominator: DenominatorType::TenThousand as i32,
        }
    } else {
        FractionalPercent {
            numerator: ppm,
            denominator: DenominatorType::Million as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractional_percent_uses_the_coarsest_exact_denominator() {
        let p = |s| traffic_labels::parse_percent(s).ok().map(fractional_percent);
        let fp = |n, d: DenominatorType| {
            Some(FractionalPercent {
                numerator: n,
                denominator: d as i32,
            })
        };
        assert_eq!(p("50"), fp(50, DenominatorType::Hundred));
        assert_eq!(p("100"), fp(100, DenominatorType::Hundred));
        assert_eq!(p("12.5"), fp(1250, DenominatorType::TenThousand));
        assert_eq!(p("0.0001"), fp(1, DenominatorType::Million));
        assert_eq!(p("0"), fp(0, DenominatorType::Hundred));
    }

    #[test]
    fn versions_change_with_content_and_are_stable() {
        let a = Any {
            type_url: "t".into(),
            value: vec![1, 2],
        };
        let b = Any {
            type_url: "t".into(),
            value: vec![1, 3],
        };
        assert_eq!(content_version(&a), content_version(&a.clone()));
        assert_ne!(content_version(&a), content_version(&b));
        assert_eq!(content_version(&a).len(), 16);
    }
}
