//! The model as the translator sees it: labels parsed once per object, Services with the pods they
//! select and the protocol of each port ([`Ctx`]).

use std::collections::{BTreeMap, BTreeSet};

use traffic_labels::{
    effective_enabled, effective_weight, parse, LabelError, ObjectKind, PortProtocol, Settings,
};

use super::{ObjectLabelError, Options};
use crate::model::{
    Ingress, IngressBackend, MeshModel, Pod, PortProtocol as L4, Service, ServicePort, TargetPort,
    WorkloadKind,
};
use crate::routing::{ExternalHost, ExternalProtocol, HttpRule, RoutingModel, ServiceKey};
use crate::snapshot::ObjectRef;

pub(super) fn service_ref(svc: &Service) -> ObjectRef {
    ObjectRef::new("Service", &svc.namespace, &svc.name)
}

pub(super) fn pod_ref(pod: &Pod) -> ObjectRef {
    ObjectRef::new("Pod", &pod.namespace, &pod.name)
}

pub(super) fn ingress_ref(ing: &Ingress) -> ObjectRef {
    ObjectRef::new("Ingress", &ing.namespace, &ing.name)
}

/// A ServiceEntry host as the Service the rest of the translator sees: named like the host, in
/// the entry's namespace, its ports TCP, no cluster IPs (its addresses are matched separately) and
/// no selector.
pub(super) fn external_service(e: &ExternalHost) -> Service {
    Service {
        namespace: e.key.namespace.clone(),
        name: e.key.name.clone(),
        cluster_ips: Vec::new(),
        ports: e
            .ports
            .iter()
            .map(|p| ServicePort {
                name: Some(p.name.clone()),
                port: p.number,
                target_port: None,
                protocol: L4::Tcp,
            })
            .collect(),
        selector: BTreeMap::new(),
        labels: BTreeMap::new(),
    }
}

/// `<port>|<namespace>|<service>`.
pub fn cluster_name(svc: &Service, port: &ServicePort) -> String {
    format!("{}|{}|{}", port.port, svc.namespace, svc.name)
}

pub(super) struct SvcCtx<'m> {
    pub(super) svc: &'m Service,
    /// Pods the Service selects (ready or not).
    pub(super) pods: Vec<&'m Pod>,
    pub(super) settings: Settings,
    pub(super) origin: ObjectRef,
    pub(super) ports: Vec<PortCtx<'m>>,
    /// Set for a ServiceEntry host: how its clusters, endpoints and filter chains are built.
    pub(super) external: Option<ExternalHost>,
}

pub(super) struct PortCtx<'m> {
    pub(super) port: &'m ServicePort,
    pub(super) cluster: String,
    /// From the Service's `traffic.port.<N>`, or `http` when an Ingress names the port.
    pub(super) protocol: Option<PortProtocol>,
}

pub(super) struct PodCtx<'m> {
    pub(super) pod: &'m Pod,
    pub(super) settings: Settings,
    pub(super) enabled: bool,
    pub(super) weight: u8,
}

pub(super) struct Ctx<'m> {
    pub(super) model: &'m MeshModel,
    pub(super) opts: &'m Options,
    pub(super) services: Vec<SvcCtx<'m>>,
    pub(super) pods: BTreeMap<(&'m str, &'m str), PodCtx<'m>>,
    /// What the front ends said, lowered (Istio's by `istio_lower`, then the labels' by
    /// `label_lower` once the labels are parsed here).
    pub(super) routing: RoutingModel,
    /// Base cluster name (`<port>|<ns>|<svc>`) -> the model's rules for that port whose
    /// references all resolve (see `mesh_rules`).
    pub(super) rules: BTreeMap<String, Vec<HttpRule>>,
    /// Istio Gateway servers with their usable rules (VirtualServices bound to Gateways).
    pub(super) gateway_servers: Vec<crate::routing::GatewayServer>,
    /// Base cluster name -> (cluster, weight) of its usable Istio `tcp[]` route.
    pub(super) tcp_routes: BTreeMap<String, Vec<(String, u32)>>,
}

impl<'m> Ctx<'m> {
    /// `external`: [`external_service`] of each of `routing.external`, in that order.
    pub(super) fn new(
        model: &'m MeshModel,
        external: &'m [Service],
        opts: &'m Options,
        routing: RoutingModel,
        errors: &mut Vec<ObjectLabelError>,
    ) -> Self {
        let mut report = |object: ObjectRef, errs: Vec<LabelError>| {
            errors.extend(errs.into_iter().map(|error| ObjectLabelError {
                object: object.clone(),
                error,
            }));
        };

        let mut workloads: BTreeMap<(WorkloadKind, &str, &str), Settings> = BTreeMap::new();
        for w in &model.workloads {
            let parsed = parse(ObjectKind::Workload, &w.labels);
            report(
                ObjectRef::new(w.kind.as_str(), &w.namespace, &w.name),
                parsed.errors,
            );
            workloads.insert((w.kind, &w.namespace, &w.name), parsed.settings);
        }

        let mut pods = BTreeMap::new();
        for pod in &model.pods {
            let parsed = parse(ObjectKind::Pod, &pod.labels);
            report(pod_ref(pod), parsed.errors);
            let owner = pod
                .owner
                .as_ref()
                .and_then(|o| workloads.get(&(o.kind, &*pod.namespace, &*o.name)));
            pods.insert(
                (&*pod.namespace, &*pod.name),
                PodCtx {
                    pod,
                    enabled: effective_enabled(&parsed.settings, owner),
                    weight: effective_weight(&parsed.settings, owner),
                    settings: parsed.settings,
                },
            );
        }

        // Service ports named by an Ingress are `http` unless labelled otherwise.
        let mut ingress_ports: BTreeSet<(&str, &str, u16)> = BTreeSet::new();
        for ing in &model.ingresses {
            for backend in ingress_backends(ing) {
                if let Some(svc) = model.service(&ing.namespace, &backend.service) {
                    if let Some(port) = resolve_service_port(svc, &backend.port) {
                        ingress_ports.insert((&svc.namespace, &svc.name, port.port));
                    }
                }
            }
        }

        let index = crate::model::PodIndex::new(&model.pods);
        let mut services = Vec::new();
        for svc in &model.services {
            let parsed = parse(ObjectKind::Service, &svc.labels);
            report(service_ref(svc), parsed.errors);
            let key = ServiceKey::new(&svc.namespace, &svc.name);
            let tcp_ports = svc.ports.iter().filter(|p| p.protocol == L4::Tcp).count();
            // A port with routing-model (Istio) rules is `http` when nothing else says what it is
            // and it looks like HTTP: its name (`http`, `http-*`, `http2*`, `grpc*`) or it is the
            // Service's only TCP port.
            let routed = |port: &ServicePort| {
                routing.http.contains_key(&(key.clone(), port.port))
                    && (tcp_ports == 1 || port.name.as_deref().is_some_and(http_like_name))
            };
            let ports = svc
                .ports
                .iter()
                .filter(|p| p.protocol == L4::Tcp)
                .map(|port| PortCtx {
                    port,
                    cluster: cluster_name(svc, port),
                    protocol: parsed.settings.ports.get(&port.port).copied().or_else(|| {
                        ingress_ports
                            .contains(&(&*svc.namespace, &*svc.name, port.port))
                            .then_some(PortProtocol::Http)
                            .or_else(|| routed(port).then_some(PortProtocol::Http))
                            .or_else(|| {
                                // A port only an Istio `tcp[]` rule names is opaque TCP.
                                routing
                                    .tcp
                                    .contains_key(&(key.clone(), port.port))
                                    .then_some(PortProtocol::Tcp)
                            })
                    }),
                })
                .collect();
            services.push(SvcCtx {
                svc,
                pods: index.selected(svc),
                settings: parsed.settings,
                origin: service_ref(svc),
                ports,
                external: None,
            });
        }
        for (svc, e) in external.iter().zip(&routing.external) {
            let ports = svc
                .ports
                .iter()
                .zip(&e.ports)
                .map(|(port, ep)| PortCtx {
                    port,
                    cluster: cluster_name(svc, port),
                    protocol: Some(match ep.protocol {
                        ExternalProtocol::Http => PortProtocol::Http,
                        ExternalProtocol::Tls | ExternalProtocol::Tcp => PortProtocol::Tcp,
                    }),
                })
                .collect();
            services.push(SvcCtx {
                svc,
                pods: Vec::new(),
                settings: Settings::default(),
                origin: e.origin.clone(),
                ports,
                external: Some(e.clone()),
            });
        }
        Ctx {
            model,
            opts,
            services,
            pods,
            routing,
            rules: BTreeMap::new(),
            gateway_servers: Vec::new(),
            tcp_routes: BTreeMap::new(),
        }
    }

    /// The Service `key` names.
    pub(super) fn service(&self, key: &ServiceKey) -> Option<&SvcCtx<'m>> {
        self.services
            .iter()
            .find(|s| s.svc.namespace == key.namespace && s.svc.name == key.name)
    }

    pub(super) fn pod_ctx(&self, pod: &'m Pod) -> Option<&PodCtx<'m>> {
        self.pods.get(&(&*pod.namespace, &*pod.name))
    }
}

/// Port names Istio reads as HTTP.
fn http_like_name(name: &str) -> bool {
    let proto = name.split('-').next().unwrap_or(name);
    matches!(proto, "http" | "http2" | "grpc" | "grpc-web")
}

pub(super) fn ingress_backends(ing: &Ingress) -> impl Iterator<Item = &IngressBackend> {
    ing.default_backend
        .iter()
        .chain(ing.rules.iter().flat_map(|r| r.paths.iter().map(|p| &p.backend)))
}

pub(super) fn resolve_service_port<'s>(svc: &'s Service, port: &TargetPort) -> Option<&'s ServicePort> {
    svc.ports
        .iter()
        .filter(|p| p.protocol == L4::Tcp)
        .find(|p| match port {
            TargetPort::Number(n) => p.port == *n,
            TargetPort::Name(name) => p.name.as_deref() == Some(name.as_str()),
        })
}

/// The protocol a sidecar uses for a service port: the pod's own `traffic.port.<N>` wins (not
/// for ServiceEntry hosts, whose ports say what they are).
pub(super) fn protocol_at(pod: &Settings, s: &SvcCtx<'_>, p: &PortCtx<'_>) -> Option<PortProtocol> {
    if s.external.is_some() {
        return p.protocol;
    }
    pod.ports.get(&p.port.port).copied().or(p.protocol)
}
