//! The Envoy bootstrap of a sidecar (pure).
//!
//! Everything but the ADS connection comes from the control plane: the bootstrap holds the node
//! identity (`<pod>.<namespace>`), `dynamic_resources` (LDS and CDS over one ADS stream, SotW or
//! delta), the static `xds_cluster` (HTTP/2) that reaches the control plane, and the admin
//! interface on `127.0.0.1:<admin port>` only.
//!
//! Authentication (optional, [`XdsAuth`]): the `xds_cluster` carries an upstream HTTP filter,
//! `envoy.filters.http.credential_injector`, that sets `authorization` on the ADS stream from a
//! generic secret, `xds-token`, which Envoy reads from a file-based SDS resource
//! ([`token_sds`]) and re-reads when the file is replaced (inotify, atomic rename). The agent
//! renews the pod's ServiceAccount token before it expires and rewrites the file: Envoy is never
//! restarted, its configuration is untouched, and the next ADS stream (a reconnect after a
//! control-plane restart, say) presents the new token. With [`XdsTls`] the cluster speaks TLS,
//! verifying the control plane's certificate against the given CA and name.
//!
//! The `:8900` listener exposing `/stats/prometheus` is deliberately absent: the control plane
//! sends it over LDS (`traffic-translate`'s stats listener, routed to its `admin` cluster on
//! `127.0.0.1:<admin port>`), so the admin port here must match the control plane's
//! (`TranslateOptions::admin_port`, default [`DEFAULT_ADMIN_PORT`]).

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{json, Value};

use crate::PodRef;

/// Envoy's admin port on 127.0.0.1 in the pod netns; the control plane's default too.
pub const DEFAULT_ADMIN_PORT: u16 = 15000;
/// Name of the static cluster that reaches the control plane.
pub const XDS_CLUSTER: &str = "xds_cluster";

/// How Envoy speaks ADS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum AdsApiType {
    /// State of the world (`GRPC`).
    #[default]
    Grpc,
    /// Incremental (`DELTA_GRPC`).
    DeltaGrpc,
}

impl AdsApiType {
    fn as_envoy(self) -> &'static str {
        match self {
            AdsApiType::Grpc => "GRPC",
            AdsApiType::DeltaGrpc => "DELTA_GRPC",
        }
    }
}

impl std::str::FromStr for AdsApiType {
    type Err = BootstrapError;

    /// `grpc`/`sotw` or `delta`/`delta_grpc` (any case, `-` or `_`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "grpc" | "sotw" => Ok(AdsApiType::Grpc),
            "delta" | "delta_grpc" => Ok(AdsApiType::DeltaGrpc),
            _ => Err(BootstrapError::ApiType(s.to_string())),
        }
    }
}

/// The name of the generic secret holding the `authorization` value.
pub const TOKEN_SECRET: &str = "xds-token";

/// How the sidecar proves who it is to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsAuth {
    /// Path (as Envoy sees it) of the SDS file holding [`TOKEN_SECRET`]; see [`token_sds`]. Its
    /// directory must be watchable (the file is replaced by rename).
    pub token_sds_path: String,
}

/// TLS to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsTls {
    /// The CA certificate(s), PEM, the control plane's certificate must chain to.
    pub ca_pem: String,
    /// The name the certificate must carry (a DNS SAN), also sent as SNI.
    pub server_name: String,
}

/// The content of the token SDS file: the generic secret [`TOKEN_SECRET`] = `Bearer <token>`
/// (JSON, which Envoy reads as YAML too). Write it to a temporary file in the same directory and
/// rename it over the old one.
pub fn token_sds(token: &str) -> String {
    json!({
        "resources": [{
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            "name": TOKEN_SECRET,
            "generic_secret": {"secret": {"inline_string": format!("Bearer {}", token.trim())}},
        }],
    })
    .to_string()
}

/// What the bootstrap of every sidecar on a node shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapOptions {
    /// The ADS server as `host:port` (`10.201.0.1:18000`, `[fd00::1]:18000`,
    /// `traffic-control.traffic-system.svc.cluster.local:18000`). An IP literal gives a `STATIC`
    /// cluster, a name a `STRICT_DNS` one.
    pub control_plane: String,
    pub api_type: AdsApiType,
    /// Admin interface port on 127.0.0.1.
    pub admin_port: u16,
    /// `node.cluster`; `None` uses the pod's namespace.
    pub cluster: Option<String>,
    /// How long Envoy waits for the first LDS/CDS response before it turns ready anyway;
    /// `None` keeps Envoy's default (15 s).
    pub initial_fetch_timeout: Option<Duration>,
    /// Connect timeout of the `xds_cluster`.
    pub connect_timeout: Duration,
    /// Present a token on the ADS stream; `None`: none (the control plane must not require one).
    pub auth: Option<XdsAuth>,
    /// TLS to the control plane; `None`: plaintext.
    pub tls: Option<XdsTls>,
}

impl BootstrapOptions {
    /// Defaults (SotW ADS, admin on [`DEFAULT_ADMIN_PORT`]) for the control plane at `host:port`.
    pub fn new(control_plane: impl Into<String>) -> Self {
        BootstrapOptions {
            control_plane: control_plane.into(),
            api_type: AdsApiType::Grpc,
            admin_port: DEFAULT_ADMIN_PORT,
            cluster: None,
            initial_fetch_timeout: None,
            connect_timeout: Duration::from_secs(1),
            auth: None,
            tls: None,
        }
    }
}

/// The `http_filters` of the `xds_cluster`'s protocol options: the credential injector reading
/// the token from the SDS file, then the upstream codec (required last).
fn token_filters(auth: &XdsAuth) -> Value {
    json!([
        {
            "name": "envoy.filters.http.credential_injector",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector",
                "overwrite": true,
                "credential": {
                    "name": "envoy.http.injected_credentials.generic",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic",
                        "credential": {
                            "name": TOKEN_SECRET,
                            "sds_config": {"path_config_source": {"path": auth.token_sds_path}},
                        },
                    },
                },
            },
        },
        {
            "name": "envoy.filters.http.upstream_codec",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"},
        },
    ])
}

/// An IP address as the name: matched against an IP SAN, and no SNI (SNI carries host names only).
fn tls_socket(tls: &XdsTls) -> Value {
    let is_ip = tls.server_name.parse::<IpAddr>().is_ok();
    let mut context = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "validation_context": {
                "trusted_ca": {"inline_string": tls.ca_pem},
                "match_typed_subject_alt_names": [
                    {"san_type": if is_ip { "IP_ADDRESS" } else { "DNS" }, "matcher": {"exact": tls.server_name}},
                ],
            },
        },
    });
    if !is_ip {
        context["sni"] = json!(tls.server_name);
    }
    json!({"name": "envoy.transport_sockets.tls", "typed_config": context})
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootstrapError {
    #[error("control plane address {0:?} is not host:port")]
    Address(String),
    #[error("unknown ADS api type {0:?} (grpc | delta)")]
    ApiType(String),
    #[error("admin port must not be 0")]
    AdminPort,
}

/// `host:port` split, brackets of an IPv6 literal removed; `(host, port, is_ip)`.
fn split_host_port(addr: &str) -> Result<(String, u16, bool), BootstrapError> {
    let bad = || BootstrapError::Address(addr.to_string());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    let host = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']').ok_or_else(bad)?,
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(bad());
    }
    let is_ip = host.parse::<IpAddr>().is_ok();
    Ok((host.to_string(), port, is_ip))
}

fn duration(d: Duration) -> String {
    // Envoy's JSON Duration: seconds with up to 9 fractional digits and an `s` suffix.
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}.{:09}s", d.as_secs(), d.subsec_nanos())
    }
}

/// The bootstrap as a JSON value.
pub fn bootstrap(pod: &PodRef, opts: &BootstrapOptions) -> Result<Value, BootstrapError> {
    if opts.admin_port == 0 {
        return Err(BootstrapError::AdminPort);
    }
    let (host, port, is_ip) = split_host_port(&opts.control_plane)?;
    let ads_source = |timeout: Option<Duration>| {
        let mut source = json!({"ads": {}, "resource_api_version": "V3"});
        if let Some(t) = timeout {
            source["initial_fetch_timeout"] = json!(duration(t));
        }
        source
    };
    let mut protocol = json!({
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    });
    if let Some(auth) = &opts.auth {
        protocol["http_filters"] = token_filters(auth);
    }
    let mut b = json!({
        "node": {
            "id": pod.node_id(),
            "cluster": opts.cluster.clone().unwrap_or_else(|| pod.namespace.clone()),
            "metadata": {
                "pod_uid": pod.uid,
                "pod_name": pod.name,
                "pod_namespace": pod.namespace,
            },
        },
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": opts.admin_port}},
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": opts.api_type.as_envoy(),
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
            },
            "lds_config": ads_source(opts.initial_fetch_timeout),
            "cds_config": ads_source(opts.initial_fetch_timeout),
        },
        "static_resources": {
            "clusters": [{
                "name": XDS_CLUSTER,
                "type": if is_ip { "STATIC" } else { "STRICT_DNS" },
                "connect_timeout": duration(opts.connect_timeout),
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": protocol,
                },
                "load_assignment": {
                    "cluster_name": XDS_CLUSTER,
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                        "socket_address": {"address": host, "port_value": port},
                    }}}]}],
                },
            }],
        },
    });
    if let Some(tls) = &opts.tls {
        b["static_resources"]["clusters"][0]["transport_socket"] = tls_socket(tls);
    }
    Ok(b)
}

/// The bootstrap as compact JSON (valid YAML, for `envoy --config-yaml`).
pub fn render(pod: &PodRef, opts: &BootstrapOptions) -> Result<String, BootstrapError> {
    Ok(bootstrap(pod, opts)?.to_string())
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn pod() -> PodRef {
        PodRef {
            uid: "3859d687-9149-4bc2-9f5d-f115c0506b70".into(),
            namespace: "shop".into(),
            name: "reviews-v1-55cbf59466-mwxj5".into(),
        }
    }

    #[test]
    fn the_node_is_pod_dot_namespace_in_the_namespace_cluster() {
        let b = bootstrap(&pod(), &BootstrapOptions::new("10.201.0.1:18000")).unwrap();
        assert_eq!(b["node"]["id"], "reviews-v1-55cbf59466-mwxj5.shop");
        assert_eq!(b["node"]["cluster"], "shop");
        assert_eq!(b["node"]["metadata"]["pod_uid"], pod().uid);
    }

    #[test]
    fn a_configured_cluster_name_replaces_the_namespace() {
        let mut o = BootstrapOptions::new("10.201.0.1:18000");
        o.cluster = Some("mesh".into());
        assert_eq!(bootstrap(&pod(), &o).unwrap()["node"]["cluster"], "mesh");
    }

    #[test]
    fn lds_and_cds_come_over_ads_with_the_selected_api_type() {
        let mut o = BootstrapOptions::new("10.201.0.1:18000");
        let b = bootstrap(&pod(), &o).unwrap();
        let d = &b["dynamic_resources"];
        assert_eq!(d["ads_config"]["api_type"], "GRPC");
        assert_eq!(
            d["ads_config"]["grpc_services"][0]["envoy_grpc"]["cluster_name"],
            XDS_CLUSTER
        );
        assert_eq!(d["lds_config"], json!({"ads": {}, "resource_api_version": "V3"}));
        assert_eq!(d["cds_config"], d["lds_config"]);

        o.api_type = AdsApiType::DeltaGrpc;
        o.initial_fetch_timeout = Some(Duration::from_millis(1500));
        let b = bootstrap(&pod(), &o).unwrap();
        assert_eq!(b["dynamic_resources"]["ads_config"]["api_type"], "DELTA_GRPC");
        assert_eq!(
            b["dynamic_resources"]["cds_config"]["initial_fetch_timeout"],
            "1.500000000s"
        );
    }

    #[test]
    fn admin_listens_on_loopback_only_and_no_static_listener_is_defined() {
        let mut o = BootstrapOptions::new("10.201.0.1:18000");
        o.admin_port = 15123;
        let b = bootstrap(&pod(), &o).unwrap();
        assert_eq!(
            b["admin"]["address"]["socket_address"],
            json!({"address": "127.0.0.1", "port_value": 15123})
        );
        // The :8900 stats listener comes from the control plane over LDS.
        assert!(b["static_resources"].get("listeners").is_none());
        assert!(!b.to_string().contains("8900"));
    }

    #[test]
    fn the_xds_cluster_is_http2_static_for_an_ip_and_dns_for_a_name() {
        let b = bootstrap(&pod(), &BootstrapOptions::new("10.201.0.1:18000")).unwrap();
        let c = &b["static_resources"]["clusters"][0];
        assert_eq!(c["name"], XDS_CLUSTER);
        assert_eq!(c["type"], "STATIC");
        assert_eq!(c["connect_timeout"], "1s");
        let proto =
            &c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert_eq!(
            proto["explicit_http_config"],
            json!({"http2_protocol_options": {}})
        );
        let sa =
            &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
        assert_eq!(*sa, json!({"address": "10.201.0.1", "port_value": 18000}));

        let b = bootstrap(
            &pod(),
            &BootstrapOptions::new("traffic-control.traffic.svc:18000"),
        )
        .unwrap();
        assert_eq!(b["static_resources"]["clusters"][0]["type"], "STRICT_DNS");
        let b = bootstrap(&pod(), &BootstrapOptions::new("[fd00::1]:18000")).unwrap();
        let c = &b["static_resources"]["clusters"][0];
        assert_eq!(c["type"], "STATIC");
        assert_eq!(
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
                ["address"],
            "fd00::1"
        );
    }

    #[test]
    fn malformed_control_plane_addresses_are_refused() {
        for bad in [
            "10.201.0.1",
            "10.201.0.1:",
            ":18000",
            "host:0",
            "host:99999",
            "fd00::1:18000",
            "[fd00::1:18000",
            "a b:1",
        ] {
            assert_eq!(
                render(&pod(), &BootstrapOptions::new(bad)),
                Err(BootstrapError::Address(bad.into())),
                "{bad}"
            );
        }
        let mut o = BootstrapOptions::new("10.201.0.1:18000");
        o.admin_port = 0;
        assert_eq!(render(&pod(), &o), Err(BootstrapError::AdminPort));
    }

    #[test]
    fn with_auth_the_xds_cluster_injects_the_token_from_the_sds_file_and_verifies_the_ca() {
        let plain = bootstrap(&pod(), &BootstrapOptions::new("10.201.0.1:18000")).unwrap();
        let c = &plain["static_resources"]["clusters"][0];
        assert!(c.get("transport_socket").is_none());
        assert!(c["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            .get("http_filters")
            .is_none());

        let mut o = BootstrapOptions::new("10.201.0.1:18000");
        o.auth = Some(XdsAuth {
            token_sds_path: "/var/run/traffic/xds-token.yaml".into(),
        });
        o.tls = Some(XdsTls {
            ca_pem: "-----BEGIN CERTIFICATE-----\n...".into(),
            server_name: "traffic-control.traffic-system.svc".into(),
        });
        let b = bootstrap(&pod(), &o).unwrap();
        let c = &b["static_resources"]["clusters"][0];
        let filters = &c["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"];
        assert_eq!(filters[0]["name"], "envoy.filters.http.credential_injector");
        assert_eq!(
            filters[0]["typed_config"]["credential"]["typed_config"]["credential"],
            json!({"name": TOKEN_SECRET, "sds_config": {"path_config_source": {"path": "/var/run/traffic/xds-token.yaml"}}})
        );
        assert_eq!(filters[1]["name"], "envoy.filters.http.upstream_codec");
        let tls = &c["transport_socket"]["typed_config"];
        assert_eq!(tls["sni"], "traffic-control.traffic-system.svc");
        assert_eq!(
            tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"][0]["matcher"]
                ["exact"],
            "traffic-control.traffic-system.svc"
        );

        o.tls = Some(XdsTls {
            ca_pem: "pem".into(),
            server_name: "10.201.0.1".into(),
        });
        let b = bootstrap(&pod(), &o).unwrap();
        let tls = &b["static_resources"]["clusters"][0]["transport_socket"]["typed_config"];
        assert!(tls.get("sni").is_none());
        assert_eq!(
            tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"][0],
            json!({"san_type": "IP_ADDRESS", "matcher": {"exact": "10.201.0.1"}})
        );

        let sds: Value = serde_json::from_str(&token_sds("abc.def.ghi\n")).unwrap();
        assert_eq!(sds["resources"][0]["name"], TOKEN_SECRET);
        assert_eq!(
            sds["resources"][0]["generic_secret"]["secret"]["inline_string"],
            "Bearer abc.def.ghi"
        );
    }

    #[test]
    fn api_types_parse_from_their_usual_spellings() {
        assert_eq!("grpc".parse(), Ok(AdsApiType::Grpc));
        assert_eq!("SotW".parse(), Ok(AdsApiType::Grpc));
        assert_eq!("delta".parse(), Ok(AdsApiType::DeltaGrpc));
        assert_eq!("DELTA_GRPC".parse(), Ok(AdsApiType::DeltaGrpc));
        assert_eq!("delta-grpc".parse(), Ok(AdsApiType::DeltaGrpc));
        assert_eq!(
            "rest".parse::<AdsApiType>(),
            Err(BootstrapError::ApiType("rest".into()))
        );
    }
}
