//! Views of a node's resources for humans and for Envoy without a control plane.
//!
//! - [`static_bootstrap`]: the node's resources folded into one Envoy `Bootstrap` with only
//!   static resources (RDS inlined into listeners, EDS clusters made STATIC with their assignment,
//!   SDS secrets made static). `envoy --mode validate -c <file>.pb` checks it; `envoy -c` runs it.
//!   The tests use it to prove real Envoy accepts what we generate.
//! - [`render_json`]: proto3 JSON (what Envoy's own config dump shows), for `traffic-control config
//!   --node-id`; YAML is `serde_yaml::to_string` of the same value. envoy-types' prost types have
//!   no serde support and export no descriptors, so `descriptors/envoy.bin` vendors the descriptors
//!   of the messages we emit (pruned from envoy-types' `types.bin` by `descriptors/prune.py`) and
//!   prost-reflect serializes through them, nested `Any`s included (`"@type"`).
//! - [`render_text`]: the decoded messages' `Debug` output, nested `Any`s decoded in place; no
//!   descriptors needed.
//!
//! Private keys are never rendered.

use envoy_types::pb::envoy::config::bootstrap::v3::{bootstrap::StaticResources, Admin, Bootstrap};
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{transport_socket, Node};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{DownstreamTlsContext, Secret};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use crate::envoy;
use crate::snapshot::{NodeResources, CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};

/// Why a node's resources cannot be folded into a static bootstrap.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("the vendored Envoy descriptors do not load (regenerate descriptors/envoy.bin): {0}")]
    Descriptors(String),
    #[error("{type_url} is not among the vendored descriptors (add its file to descriptors/prune.py)")]
    UnknownType { type_url: String },
    #[error("cannot render {type_url} as JSON: {error}")]
    Json { type_url: String, error: String },
    #[error("{what} {name:?} is not a valid {type_url}: {source}")]
    Decode {
        what: &'static str,
        name: String,
        type_url: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error("{from} refers to {missing_type} {name:?}, which the node does not get")]
    Missing {
        from: String,
        missing_type: &'static str,
        name: String,
    },
}

fn decode<M: Message + Name + Default>(what: &'static str, name: &str, any: &Any) -> Result<M, RenderError> {
    M::decode(any.value.as_slice()).map_err(|source| RenderError::Decode {
        what,
        name: name.to_string(),
        type_url: any.type_url.clone(),
        source,
    })
}

fn lookup<'a>(
    res: &'a NodeResources,
    type_url: &'static str,
    name: &str,
    from: &str,
) -> Result<&'a Any, RenderError> {
    res.get(type_url)
        .and_then(|m| m.get(name))
        .map(|r| &r.body)
        .ok_or_else(|| RenderError::Missing {
            from: from.to_string(),
            missing_type: type_url.rsplit('.').next().unwrap_or(type_url),
            name: name.to_string(),
        })
}

fn inline_chain(res: &NodeResources, listener: &str, chain: &mut FilterChain) -> Result<(), RenderError> {
    for f in &mut chain.filters {
        let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else {
            continue;
        };
        if any.type_url != HttpConnectionManager::type_url() {
            continue;
        }
        let mut hcm: HttpConnectionManager = decode("Listener", listener, any)?;
        if let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
            let body = lookup(res, ROUTE, &rds.route_config_name, listener)?;
            let rc: RouteConfiguration = decode("RouteConfiguration", &rds.route_config_name, body)?;
            hcm.route_specifier = Some(http_connection_manager::RouteSpecifier::RouteConfig(rc));
            *any = envoy::any(&hcm);
        }
    }
    if let Some(ts) = &mut chain.transport_socket {
        if let Some(transport_socket::ConfigType::TypedConfig(any)) = &mut ts.config_type {
            if any.type_url == DownstreamTlsContext::type_url() {
                let mut tls: DownstreamTlsContext = decode("Listener", listener, any)?;
                if let Some(common) = &mut tls.common_tls_context {
                    for sds in &mut common.tls_certificate_sds_secret_configs {
                        // Without a config source Envoy looks the name up in static secrets.
                        sds.sds_config = None;
                    }
                }
                *any = envoy::any(&tls);
            }
        }
    }
    Ok(())
}

/// Fold one node's resources into a static `Bootstrap` (admin on 127.0.0.1:`admin_port`).
pub fn static_bootstrap(
    node_id: &str,
    res: &NodeResources,
    admin_port: u16,
) -> Result<Bootstrap, RenderError> {
    let mut statics = StaticResources::default();
    for (name, r) in res.get(LISTENER).into_iter().flatten() {
        let mut l: Listener = decode("Listener", name, &r.body)?;
        for chain in l
            .filter_chains
            .iter_mut()
            .chain(l.default_filter_chain.iter_mut())
        {
            inline_chain(res, name, chain)?;
        }
        statics.listeners.push(l);
    }
    for (name, r) in res.get(CLUSTER).into_iter().flatten() {
        let mut c: Cluster = decode("Cluster", name, &r.body)?;
        let eds = c.cluster_discovery_type
            == Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            ));
        if eds {
            let service = c
                .eds_cluster_config
                .take()
                .map(|e| e.service_name)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| name.clone());
            let body = lookup(res, ENDPOINT, &service, name)?;
            let cla: ClusterLoadAssignment = decode("ClusterLoadAssignment", &service, body)?;
            c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static as i32,
            ));
            c.load_assignment = Some(cla);
        }
        statics.clusters.push(c);
    }
    for (name, r) in res.get(SECRET).into_iter().flatten() {
        statics.secrets.push(decode::<Secret>("Secret", name, &r.body)?);
    }
    Ok(Bootstrap {
        node: Some(Node {
            id: node_id.to_string(),
            cluster: "traffic-manager".to_string(),
            ..Default::default()
        }),
        static_resources: Some(statics),
        admin: Some(Admin {
            address: Some(envoy::socket_address("127.0.0.1", admin_port)),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// `Debug` of a decoded message of a type we emit, or `None` for an unknown type URL.
fn debug_of(any: &Any) -> Option<String> {
    use envoy_types::pb::envoy::config::trace::v3::ZipkinConfig;
    use envoy_types::pb::envoy::extensions::filters::http::bandwidth_limit::v3::BandwidthLimit;
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
    use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;

    fn d<M: Message + Name + Default + std::fmt::Debug>(any: &Any) -> Option<String> {
        (any.type_url == M::type_url())
            .then(|| M::decode(any.value.as_slice()).ok().map(|m| format!("{m:#?}")))
            .flatten()
    }
    d::<Listener>(any)
        .or_else(|| d::<RouteConfiguration>(any))
        .or_else(|| d::<Cluster>(any))
        .or_else(|| d::<ClusterLoadAssignment>(any))
        .or_else(|| d::<Secret>(any).map(|_| "Secret { <redacted> }".to_string()))
        .or_else(|| d::<HttpConnectionManager>(any))
        .or_else(|| d::<TcpProxy>(any))
        .or_else(|| d::<Router>(any))
        .or_else(|| d::<HttpFault>(any))
        .or_else(|| d::<BandwidthLimit>(any))
        .or_else(|| d::<ZipkinConfig>(any))
        .or_else(|| d::<envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions>(any))
        .or_else(|| d::<OriginalDst>(any))
        .or_else(|| d::<TlsInspector>(any))
        .or_else(|| d::<envoy_types::pb::envoy::extensions::clusters::dns::v3::DnsCluster>(any))
        .or_else(|| d::<DownstreamTlsContext>(any).map(|_| "DownstreamTlsContext { <redacted> }".to_string()))
}

/// Replace every `value: [1, 2, ...]` byte list that follows a `type_url: "..."` in pretty
/// `Debug` output by the decoded message, indented in place.
fn expand_nested(text: &str, depth: usize) -> String {
    const MARK: &str = "type_url: \"";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(MARK) {
        let after = &rest[start + MARK.len()..];
        let Some(end) = after.find('"') else { break };
        let type_url = &after[..end];
        let tail = &after[end + 1..];
        let value_at = tail.find("value: [");
        let Some(value_at) = value_at.filter(|v| {
            tail[..*v]
                .trim_matches(|c: char| c == ',' || c.is_whitespace())
                .is_empty()
        }) else {
            out.push_str(&rest[..start + MARK.len() + end + 1]);
            rest = tail;
            continue;
        };
        let list_start = value_at + "value: [".len();
        let Some(list_len) = tail[list_start..].find(']') else {
            break;
        };
        let bytes: Option<Vec<u8>> = tail[list_start..list_start + list_len]
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u8>().ok())
            .collect();
        let any = Any {
            type_url: type_url.to_string(),
            value: bytes.unwrap_or_default(),
        };
        out.push_str(&rest[..start + MARK.len() + end + 1]);
        match debug_of(&any).filter(|_| depth < 16) {
            Some(decoded) => {
                let indent: String = {
                    let line_start = out.rfind('\n').map(|i| i + 1).unwrap_or(0);
                    out[line_start..]
                        .chars()
                        .take_while(|c| c.is_whitespace())
                        .collect()
                };
                let decoded = expand_nested(&decoded, depth + 1).replace('\n', &format!("\n{indent}"));
                out.push_str(&tail[..value_at]);
                out.push_str("value: ");
                out.push_str(&decoded);
            }
            None => out.push_str(&tail[..list_start + list_len + 1]),
        }
        rest = &tail[list_start + list_len + 1..];
    }
    out.push_str(rest);
    out
}

/// Drop lines of pretty `Debug` output that only show a proto3 default (`None`, `[]`, `{}`,
/// `false`, `""`, `0`), so what remains is what the config sets.
fn omit_defaults(text: &str) -> String {
    const DEFAULTS: [&str; 6] = ["None", "[]", "{}", "false", "\"\"", "0"];
    text.lines()
        .filter(|line| {
            let Some((_, value)) = line.trim_start().split_once(": ") else {
                return true;
            };
            !DEFAULTS.contains(&value.trim_end_matches(','))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A readable dump of one node's resources: type, name, version and origin of each, then the
/// decoded message (pretty `Debug`, proto3 defaults omitted) with nested `Any`s decoded in place.
/// Private keys are never printed.
pub fn render_text(res: &NodeResources) -> String {
    let mut out = String::new();
    for (type_url, resources) in &res.by_type {
        for (name, r) in resources.iter() {
            let origin = r
                .origin
                .as_ref()
                .map(|o| o.to_string())
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "### {} {name:?} version={} origin={origin}\n",
                type_url.rsplit('.').next().unwrap_or(type_url),
                r.version
            ));
            let body = debug_of(&r.body).unwrap_or_else(|| format!("{:#?}", r.body));
            out.push_str(&omit_defaults(&expand_nested(&body, 0)));
            out.push('\n');
        }
    }
    out
}

static DESCRIPTORS: &[u8] = include_bytes!("../descriptors/envoy.bin");

fn pool() -> Result<&'static prost_reflect::DescriptorPool, RenderError> {
    static POOL: std::sync::OnceLock<Result<prost_reflect::DescriptorPool, String>> =
        std::sync::OnceLock::new();
    POOL.get_or_init(|| prost_reflect::DescriptorPool::decode(DESCRIPTORS).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| RenderError::Descriptors(e.clone()))
}

/// Replace the value of every `privateKey` (or `private_key`) field by `"<redacted>"`.
fn redact(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k == "privateKey" || k == "private_key" {
                    *child = serde_json::Value::String("<redacted>".into());
                } else {
                    redact(child);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// One encoded message as proto3 JSON (default fields omitted, nested `Any`s with `"@type"`).
pub fn any_to_json(any: &Any) -> Result<serde_json::Value, RenderError> {
    let name = any.type_url.rsplit('/').next().unwrap_or(&any.type_url);
    let desc = pool()?
        .get_message_by_name(name)
        .ok_or_else(|| RenderError::UnknownType {
            type_url: any.type_url.clone(),
        })?;
    let json_err = |error: String| RenderError::Json {
        type_url: any.type_url.clone(),
        error,
    };
    let msg = prost_reflect::DynamicMessage::decode(desc, any.value.as_slice())
        .map_err(|e| json_err(e.to_string()))?;
    let options = prost_reflect::SerializeOptions::new().skip_default_fields(true);
    let mut v = msg
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| json_err(e.to_string()))?;
    redact(&mut v);
    Ok(v)
}

/// A node's resources as JSON: `{ "<Type>": { "<name>": { "version", "origin", "resource" } } }`.
pub fn render_json(res: &NodeResources) -> Result<serde_json::Value, RenderError> {
    let mut out = serde_json::Map::new();
    for (type_url, resources) in &res.by_type {
        let mut by_name = serde_json::Map::new();
        for (name, r) in resources.iter() {
            by_name.insert(
                name.clone(),
                serde_json::json!({
                    "version": r.version,
                    "origin": r.origin.as_ref().map(|o| o.to_string()),
                    "resource": any_to_json(&r.body)?,
                }),
            );
        }
        let short = type_url.rsplit('.').next().unwrap_or(type_url);
        out.insert(short.to_string(), serde_json::Value::Object(by_name));
    }
    Ok(serde_json::Value::Object(out))
}
