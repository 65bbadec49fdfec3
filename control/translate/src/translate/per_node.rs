//! Per-node views: a pod gets its own copy of a resource only where its own labels change it.

use std::sync::Arc;

use super::context::{pod_ref, Ctx, PodCtx};
use super::endpoints::{load_assignment, Split};
use super::listeners::outbound_listener;
use super::routes::sidecar_routes;
use super::OUTBOUND_LISTENER;
use crate::envoy::resource;
use crate::snapshot::{NodeResources, Resources, ENDPOINT, LISTENER, ROUTE};

/// A copy of the shared sidecar view with the resources this pod's labels change, or `None` when
/// nothing changes. Unchanged resources stay the shared `Arc`s.
pub(super) fn pod_override(ctx: &Ctx<'_>, pc: &PodCtx<'_>, shared: &NodeResources) -> Option<NodeResources> {
    let labelled = !pc.settings.ports.is_empty() || !pc.settings.traffic.is_empty();
    let loopback = ctx.opts.local_endpoint_via_loopback
        && pc.settings.use_podip != Some(true)
        && pc.pod.ready
        && pc.pod.ip.is_some();
    // Routing-model rules that only some callers get (Istio sourceLabels / sourceNamespace).
    let caller = Some((pc.pod.namespace.as_str(), &pc.pod.labels));
    let by_source = ctx
        .rules
        .values()
        .flatten()
        .flat_map(|r| &r.matches)
        .any(|m| m.has_source() && m.source_matches(caller));
    if !labelled && !loopback && !by_source {
        // The common case: cloning the shared view (thousands of `Arc`s) per pod would make
        // translation quadratic.
        return None;
    }
    let origin = pod_ref(pc.pod);
    let mut view = shared.clone();
    let mut changed = false;

    if labelled || by_source {
        let routes = sidecar_routes(ctx, &pc.settings, Some(pc.pod), Some(&origin));
        let no_routes = Resources::new();
        let shared_routes = shared.get(ROUTE).unwrap_or(&no_routes);
        let merged = share_identical(routes, shared_routes);
        if merged != *shared_routes {
            view.insert(ROUTE, merged);
            changed = true;
        }
        if !pc.settings.ports.is_empty() {
            let l = outbound_listener(ctx, &pc.settings);
            let r = Arc::new(resource(OUTBOUND_LISTENER, &l, Some(origin.clone())));
            let shared_l = shared.get(LISTENER).and_then(|m| m.get(OUTBOUND_LISTENER));
            if shared_l.map(|s| s.body != r.body).unwrap_or(true) {
                view.make_mut(LISTENER).insert(OUTBOUND_LISTENER.into(), r);
                changed = true;
            }
        }
    }

    // A pod calling a service it is itself an endpoint of reaches itself on 127.0.0.1 unless
    // `traffic.envoy.local.use_podip=true`.
    if loopback {
        for s in &ctx.services {
            if !s.pods.iter().any(|p| std::ptr::eq(*p, pc.pod)) {
                continue;
            }
            for p in &s.ports {
                let lb_policy = super::cluster_policy::port_cluster(&ctx.routing, s, p, None).lb_policy;
                let cla = load_assignment(ctx, s, p, Some(pc.pod), Split::for_lb_policy(lb_policy));
                let r = resource(&p.cluster, &cla, Some(origin.clone()));
                let same = shared
                    .get(ENDPOINT)
                    .and_then(|m| m.get(&p.cluster))
                    .map(|x| x.body == r.body)
                    .unwrap_or(false);
                if !same {
                    view.make_mut(ENDPOINT).insert(p.cluster.clone(), Arc::new(r));
                    changed = true;
                }
            }
        }
    }
    changed.then_some(view)
}

/// Reuse the shared `Arc` wherever the per-node resource has the same body.
pub(super) fn share_identical(mine: Resources, shared: &Resources) -> Resources {
    mine.into_iter()
        .map(|(name, r)| match shared.get(&name) {
            Some(s) if s.body == r.body => (name, s.clone()),
            _ => (name, r),
        })
        .collect()
}
