//! The OpenAPI v3 structural schemas of the four kinds' `spec`: every field the types of this
//! crate read, deprecated and removed ones included (see the parent module).

use serde_json::{json, Map, Value};

use crate::object::Kind;

pub(super) fn string() -> Value {
    json!({"type": "string"})
}
pub(super) fn integer() -> Value {
    json!({"type": "integer"})
}
fn number() -> Value {
    json!({"type": "number"})
}
fn boolean() -> Value {
    json!({"type": "boolean"})
}
/// Istio writes durations as strings (`2s`, `100ms`); the format is checked by validation.
fn duration() -> Value {
    string()
}
pub(super) fn array(items: Value) -> Value {
    json!({"type": "array", "items": items})
}
fn strings() -> Value {
    array(string())
}
fn map_of(values: Value) -> Value {
    json!({"type": "object", "additionalProperties": values})
}
fn string_map() -> Value {
    map_of(string())
}
pub(super) fn object(props: &[(&str, Value)]) -> Value {
    let mut p = Map::new();
    for (k, v) in props {
        p.insert((*k).to_string(), v.clone());
    }
    json!({"type": "object", "properties": p})
}
fn with_description(mut v: Value, d: &str) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.insert("description".into(), Value::String(d.into()));
    }
    v
}

fn percent() -> Value {
    object(&[("value", number())])
}
fn string_match() -> Value {
    object(&[("exact", string()), ("prefix", string()), ("regex", string())])
}
fn port_selector() -> Value {
    object(&[("number", integer())])
}
fn destination() -> Value {
    object(&[
        ("host", string()),
        ("subset", string()),
        ("port", port_selector()),
    ])
}
fn header_operations() -> Value {
    object(&[
        ("set", string_map()),
        ("add", string_map()),
        ("remove", strings()),
    ])
}
fn headers() -> Value {
    object(&[
        ("request", header_operations()),
        ("response", header_operations()),
    ])
}
fn workload_selector() -> Value {
    object(&[("labels", string_map())])
}
fn route_destination() -> Value {
    object(&[("destination", destination()), ("weight", integer())])
}

fn virtual_service_spec() -> Value {
    let http_match = object(&[
        ("name", string()),
        ("uri", string_match()),
        ("scheme", string_match()),
        ("method", string_match()),
        ("authority", string_match()),
        ("headers", map_of(string_match())),
        ("port", integer()),
        ("sourceLabels", string_map()),
        ("gateways", strings()),
        ("queryParams", map_of(string_match())),
        ("ignoreUriCase", boolean()),
        ("withoutHeaders", map_of(string_match())),
        ("sourceNamespace", string()),
        ("statPrefix", string()),
        (
            "sourceSubnet",
            with_description(string(), "Removed in Istio 1.5; kept, not evaluated."),
        ),
    ]);
    let fault = object(&[
        (
            "delay",
            object(&[
                ("fixedDelay", duration()),
                ("exponentialDelay", duration()),
                ("percentage", percent()),
                (
                    "percent",
                    with_description(integer(), "Deprecated: use percentage."),
                ),
            ]),
        ),
        (
            "abort",
            object(&[
                ("httpStatus", integer()),
                ("grpcStatus", string()),
                ("http2Error", string()),
                ("percentage", percent()),
                (
                    "percent",
                    with_description(integer(), "Removed in Istio 1.5; read as percentage."),
                ),
            ]),
        ),
    ]);
    let cors = object(&[
        ("allowOrigins", array(string_match())),
        ("allowOrigin", strings()),
        ("allowMethods", strings()),
        ("allowHeaders", strings()),
        ("exposeHeaders", strings()),
        ("maxAge", duration()),
        ("allowCredentials", boolean()),
        ("unmatchedPreflights", string()),
    ]);
    let http = object(&[
        ("name", string()),
        ("match", array(http_match)),
        (
            "route",
            array(object(&[
                ("destination", destination()),
                ("weight", integer()),
                ("headers", headers()),
            ])),
        ),
        (
            "redirect",
            object(&[
                ("uri", string()),
                ("authority", string()),
                ("port", integer()),
                ("derivePort", string()),
                ("scheme", string()),
                ("redirectCode", integer()),
            ]),
        ),
        (
            "directResponse",
            object(&[
                ("status", integer()),
                ("body", object(&[("string", string()), ("bytes", string())])),
            ]),
        ),
        ("delegate", object(&[("name", string()), ("namespace", string())])),
        (
            "rewrite",
            object(&[
                ("uri", string()),
                ("authority", string()),
                (
                    "uriRegexRewrite",
                    object(&[("match", string()), ("rewrite", string())]),
                ),
            ]),
        ),
        ("timeout", duration()),
        (
            "retries",
            object(&[
                ("attempts", integer()),
                ("perTryTimeout", duration()),
                ("retryOn", string()),
                ("retryRemoteLocalities", boolean()),
                ("retryIgnorePreviousHosts", boolean()),
                ("backoff", duration()),
            ]),
        ),
        ("fault", fault),
        ("mirror", destination()),
        (
            "mirrorPercent",
            with_description(integer(), "Deprecated: use mirrorPercentage."),
        ),
        ("mirrorPercentage", percent()),
        (
            "mirrors",
            array(object(&[
                ("destination", destination()),
                ("percentage", percent()),
            ])),
        ),
        ("corsPolicy", cors),
        ("headers", headers()),
        (
            "appendHeaders",
            with_description(string_map(), "Removed in Istio 1.5; read as headers.request.add."),
        ),
        ("appendRequestHeaders", string_map()),
        ("removeRequestHeaders", strings()),
        ("appendResponseHeaders", string_map()),
        ("removeResponseHeaders", strings()),
        ("websocketUpgrade", boolean()),
    ]);
    let l4_match = |extra: &[(&str, Value)]| {
        let mut props = vec![
            ("destinationSubnets", strings()),
            ("port", integer()),
            ("sourceLabels", string_map()),
            ("gateways", strings()),
            ("sourceNamespace", string()),
            ("sourceSubnet", string()),
        ];
        props.extend(extra.iter().cloned());
        object(&props)
    };
    let tcp = object(&[
        ("match", array(l4_match(&[]))),
        ("route", array(route_destination())),
    ]);
    let tls = object(&[
        ("match", array(l4_match(&[("sniHosts", strings())]))),
        ("route", array(route_destination())),
    ]);
    object(&[
        ("hosts", strings()),
        ("gateways", strings()),
        ("http", array(http)),
        ("tls", array(tls)),
        ("tcp", array(tcp)),
        ("exportTo", strings()),
    ])
}

fn client_tls() -> Value {
    object(&[
        ("mode", string()),
        ("clientCertificate", string()),
        ("privateKey", string()),
        ("caCertificates", string()),
        ("credentialName", string()),
        ("subjectAltNames", strings()),
        ("sni", string()),
        ("insecureSkipVerify", boolean()),
        ("caCrl", string()),
    ])
}

fn duration_or_string() -> Value {
    duration()
}

fn traffic_policy_fields() -> Vec<(&'static str, Value)> {
    let load_balancer = object(&[
        ("simple", string()),
        (
            "consistentHash",
            object(&[
                ("httpHeaderName", string()),
                (
                    "httpCookie",
                    object(&[("name", string()), ("path", string()), ("ttl", duration())]),
                ),
                ("useSourceIp", boolean()),
                ("httpQueryParameterName", string()),
                ("ringHash", object(&[("minimumRingSize", integer())])),
                ("maglev", object(&[("tableSize", integer())])),
                (
                    "minimumRingSize",
                    with_description(integer(), "Deprecated: use ringHash.minimumRingSize."),
                ),
            ]),
        ),
        (
            "localityLbSetting",
            object(&[
                (
                    "distribute",
                    array(object(&[("from", string()), ("to", map_of(integer()))])),
                ),
                ("failover", array(object(&[("from", string()), ("to", string())]))),
                ("failoverPriority", strings()),
                ("enabled", boolean()),
            ]),
        ),
        ("warmupDurationSecs", duration_or_string()),
    ]);
    let connection_pool = object(&[
        (
            "tcp",
            object(&[
                ("maxConnections", integer()),
                ("connectTimeout", duration()),
                (
                    "tcpKeepalive",
                    object(&[
                        ("probes", integer()),
                        ("time", duration()),
                        ("interval", duration()),
                    ]),
                ),
                ("maxConnectionDuration", duration()),
                ("idleTimeout", duration()),
            ]),
        ),
        (
            "http",
            object(&[
                ("http1MaxPendingRequests", integer()),
                ("http2MaxRequests", integer()),
                ("maxRequestsPerConnection", integer()),
                ("maxRetries", integer()),
                ("idleTimeout", duration()),
                ("h2UpgradePolicy", string()),
                ("useClientProtocol", boolean()),
                ("maxConcurrentStreams", integer()),
            ]),
        ),
    ]);
    let outlier = object(&[
        (
            "consecutiveErrors",
            with_description(
                integer(),
                "Deprecated: read as consecutiveGatewayErrors (502/503/504), as Istio <= 1.6 did.",
            ),
        ),
        ("splitExternalLocalOriginErrors", boolean()),
        ("consecutiveLocalOriginFailures", integer()),
        ("consecutiveGatewayErrors", integer()),
        ("consecutive5xxErrors", integer()),
        ("interval", duration()),
        ("baseEjectionTime", duration()),
        ("maxEjectionPercent", integer()),
        ("minHealthPercent", integer()),
    ]);
    vec![
        ("loadBalancer", load_balancer),
        ("connectionPool", connection_pool),
        ("outlierDetection", outlier),
        ("tls", client_tls()),
    ]
}

fn traffic_policy() -> Value {
    let mut props = traffic_policy_fields();
    let mut port_level = vec![("port", port_selector())];
    port_level.extend(traffic_policy_fields());
    props.push(("portLevelSettings", array(object(&port_level))));
    props.push((
        "tunnel",
        object(&[
            ("protocol", string()),
            ("targetHost", string()),
            ("targetPort", integer()),
        ]),
    ));
    props.push(("proxyProtocol", object(&[("version", string())])));
    object(&props)
}

fn destination_rule_spec() -> Value {
    object(&[
        ("host", string()),
        ("trafficPolicy", traffic_policy()),
        (
            "subsets",
            array(object(&[
                ("name", string()),
                ("labels", string_map()),
                ("trafficPolicy", traffic_policy()),
            ])),
        ),
        ("exportTo", strings()),
        ("workloadSelector", object(&[("matchLabels", string_map())])),
    ])
}

fn port() -> Value {
    object(&[
        ("number", integer()),
        ("protocol", string()),
        ("name", string()),
        ("targetPort", integer()),
    ])
}

fn service_entry_spec() -> Value {
    object(&[
        ("hosts", strings()),
        ("addresses", strings()),
        ("ports", array(port())),
        ("location", string()),
        ("resolution", string()),
        (
            "endpoints",
            array(object(&[
                ("address", string()),
                ("ports", map_of(integer())),
                ("labels", string_map()),
                ("network", string()),
                ("locality", string()),
                ("weight", integer()),
                ("serviceAccount", string()),
            ])),
        ),
        ("workloadSelector", workload_selector()),
        ("exportTo", strings()),
        ("subjectAltNames", strings()),
    ])
}

fn gateway_spec() -> Value {
    object(&[
        ("selector", string_map()),
        (
            "servers",
            array(object(&[
                ("port", port()),
                ("bind", string()),
                ("hosts", strings()),
                (
                    "tls",
                    object(&[
                        ("httpsRedirect", boolean()),
                        ("mode", string()),
                        ("serverCertificate", string()),
                        ("privateKey", string()),
                        ("caCertificates", string()),
                        ("credentialName", string()),
                        ("subjectAltNames", strings()),
                        ("verifyCertificateSpki", strings()),
                        ("verifyCertificateHash", strings()),
                        ("minProtocolVersion", string()),
                        ("maxProtocolVersion", string()),
                        ("cipherSuites", strings()),
                    ]),
                ),
                ("defaultEndpoint", string()),
                ("name", string()),
            ])),
        ),
    ])
}

/// The spec schema of one kind.
pub fn spec_schema(kind: Kind) -> Value {
    match kind {
        Kind::VirtualService => virtual_service_spec(),
        Kind::DestinationRule => destination_rule_spec(),
        Kind::ServiceEntry => service_entry_spec(),
        Kind::Gateway => gateway_spec(),
    }
}
