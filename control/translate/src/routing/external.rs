//! The routing model's hosts outside the Service registry (Istio ServiceEntry) and the servers
//! of Istio Gateways.

use std::collections::BTreeMap;

use super::{HttpRule, ServiceKey};
use crate::snapshot::ObjectRef;

/// One host of a ServiceEntry: a destination with its own ports, addresses and endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalHost {
    /// The ServiceEntry.
    pub origin: ObjectRef,
    /// (entry namespace, host) — the host as written (`httpbin.org`, `*.example.com`).
    pub key: ServiceKey,
    /// VIPs / CIDRs the outbound filter chain matches on (empty: matched by port, and by Host
    /// header or SNI where the protocol carries one).
    pub addresses: Vec<(std::net::IpAddr, u8)>,
    pub ports: Vec<ExternalPort>,
    pub location: Location,
    pub resolution: Resolution,
    /// Used by `Static` and `Dns*` (for `Dns*` without endpoints the host itself is resolved).
    pub endpoints: Vec<ExternalEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalPort {
    pub number: u16,
    pub name: String,
    /// The endpoints' port when an endpoint's `ports` map does not name this port.
    pub target_port: Option<u16>,
    pub protocol: ExternalProtocol,
}

/// How the sidecar handles a ServiceEntry port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalProtocol {
    /// HTTP, HTTP2, GRPC: HTTP connection manager, virtual host per host (Host header).
    Http,
    /// HTTPS, TLS: tcp_proxy, chosen by SNI when the entry has no addresses.
    Tls,
    /// TCP, MONGO: tcp_proxy by destination address and port.
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    MeshExternal,
    MeshInternal,
}

/// Where a ServiceEntry's cluster finds its hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// `ORIGINAL_DST` + `CLUSTER_PROVIDED`: the address the caller connected to.
    None,
    /// EDS from the entry's endpoints.
    Static,
    /// `STRICT_DNS`, every address of every name.
    Dns,
    /// `LOGICAL_DNS`: one name, the first address of each answer.
    DnsRoundRobin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalEndpoint {
    /// An IP (`Static`) or a DNS name (`Dns*`).
    pub address: String,
    /// Port name -> port on this endpoint.
    pub ports: BTreeMap<String, u16>,
    pub labels: BTreeMap<String, String>,
    /// > 0; `None`: Envoy's default (1).
    pub weight: Option<u32>,
    /// `region/zone/sub_zone`.
    pub locality: (String, String, String),
}

impl ExternalEndpoint {
    /// The port of this endpoint for `port`: its own `ports[name]`, else the port's
    /// `targetPort`, else the port number.
    pub fn port_for(&self, port: &ExternalPort) -> u16 {
        self.ports
            .get(&port.name)
            .copied()
            .or(port.target_port)
            .unwrap_or(port.number)
    }
}

/// One `servers[]` entry of an Istio Gateway, with the VirtualService rules bound to it.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayServer {
    /// The Gateway.
    pub origin: ObjectRef,
    /// Its index in `spec.servers` (as the user wrote it).
    pub index: usize,
    /// Pod labels of the gateway proxies it applies to (empty: every one).
    pub selector: BTreeMap<String, String>,
    /// `port.number`.
    pub port: u16,
    pub protocol: ServerProtocol,
    /// `tls.httpsRedirect` of an HTTP server: every virtual host answers 301 to `https://`.
    pub https_redirect: bool,
    /// The server's hosts without their `namespace/` part, lower case (`*`, `*.suffix`): the SNI
    /// names of an HTTPS server.
    pub hosts: Vec<String>,
    /// Domain (a bound VirtualService host within the server's hosts) -> its rules in
    /// VirtualService precedence order.
    pub virtual_hosts: BTreeMap<String, Vec<HttpRule>>,
}

impl GatewayServer {
    /// `<namespace>/<gateway>/servers[<index>]`, for names and reports.
    pub fn label(&self) -> String {
        format!(
            "{}/{}/servers[{}]",
            self.origin.namespace, self.origin.name, self.index
        )
    }
}

/// What a Gateway server speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerProtocol {
    Http,
    /// TLS terminated with the certificate of this `kubernetes.io/tls` Secret (in the Gateway's
    /// namespace).
    Https {
        credential_name: String,
    },
}
