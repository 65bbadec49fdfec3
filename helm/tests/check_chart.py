#!/usr/bin/env python3
"""Checks the traffic-manager chart with the Helm v4 SDK (PyPI helm-python-sdk, no helm binary).

For every value set below (defaults, then each documented option): the values pass the chart's
values.schema.json, the chart renders, `helm lint --strict` reports nothing above INFO, and every
rendered object validates strictly (unknown fields are errors) against the Kubernetes v1.20.2
OpenAPI schema recorded from the real cluster (k8s-openapi-v1.20.2.json.gz, from
`kubectl get --raw /openapi/v2`). On top of the schema, the objects must fit together (selectors,
Service target ports, ServiceAccounts, ConfigMaps, RBAC bindings), the control plane's ClusterRole
must equal control/kube-source/rbac.yaml, and the ingress gateway's bootstrap must pass
`envoy --mode validate` when ENVOY_BIN is set.

The value sets together override every value of values.yaml, and each value, changed alone, must
change the rendered output (no documented value is ignored). Invalid values must be rejected by
the schema (render and lint fail). With --server-dry-run (auto: when KUBECONFIG is set and the API
server answers), each value set is also sent to the API server with
`kubectl apply --dry-run=server`.

Exit status 0 when everything holds; every failure is printed.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CHART = REPO / "helm" / "traffic-manager"
OPENAPI = HERE / "k8s-openapi-v1.20.2.json.gz"
CONTROL_RBAC = REPO / "control" / "kube-source" / "rbac.yaml"
KUBE_VERSION = "v1.20.2"
RELEASE = "tm"
NAMESPACE = "traffic-system"

# Each documented option, as the overrides a user would pass (-f / --set). Together they change
# every value of values.yaml (checked), so every value is rendered and validated at least once.
VALUE_SETS: list[tuple[str, dict[str, Any]]] = [
    ("defaults", {}),
    (
        "redirectMode=ebpf, e2e cluster host paths, local images",
        {
            "imagePullPolicy": "Never",
            "agent": {
                "redirectMode": "ebpf",
                # The e2e cluster's host mounts are private (Bidirectional needs a shared one).
                "bpffsMountPropagation": "None",
                "hostPaths": {
                    "cgroup2": "/sys/fs/cgroup/unified",
                    "dockerSocket": "/run/traffic-e2e/docker.sock",
                    "bpffs": "/sys/fs/bpf",
                    "state": "/var/run/traffic-manager-e2e",
                    "xdsTokens": "/var/run/traffic-manager-e2e/xds-tokens",
                },
            },
            "envoy": {"image": {"repository": "traffic-e2e/envoy", "tag": "1.39.3"}},
        },
    ),
    (
        "redirectMode=iptables, outboundPolicy=passthrough, one namespace",
        {
            "agent": {"redirectMode": "iptables", "namespace": "shop", "uninstall": {"enabled": False}},
            "control": {"outboundPolicy": "passthrough", "watchNamespace": "shop"},
        },
    ),
    (
        "redirectMode=auto (explicit), delta ADS, custom Envoy ports",
        {
            "agent": {"redirectMode": "auto", "uninstall": {"timeoutSeconds": 120}},
            "envoy": {"adsApi": "delta", "adminPort": 19000, "statsPort": 19900},
        },
    ),
    (
        "runtime=containerd, k3s socket and CRI root, own containerd namespace",
        {
            "agent": {
                "runtime": "containerd",
                "containerdNamespace": "tm-sidecars",
                "hostPaths": {
                    "containerdSocket": "/run/k3s/containerd/containerd.sock",
                    "containerdState": "/var/lib/rancher/traffic-manager/containerd",
                    "criRoot": "/var/lib/rancher/k3s/agent/containerd/io.containerd.grpc.v1.cri",
                },
            },
        },
    ),
    (
        "development: plaintext, unauthenticated xDS",
        {"xds": {"auth": False, "tls": False, "insecureDevelopment": True}},
    ),
    (
        "xDS auth tuning, own CA name",
        {
            "xds": {
                "caName": "mesh-xds-ca",
                "peerCheck": False,
                "sidecarTokenSeconds": 600,
                "gatewayTokenSeconds": 7200,
                "tokenCacheSeconds": 60,
            }
        },
    ),
    (
        "crds.install=false (Istio's own networking.istio.io CRDs are installed)",
        {"crds": {"install": False}},
    ),
    (
        "runtime=auto (both sockets mounted)",
        {"agent": {"runtime": "auto"}},
    ),
    (
        "monitor.enabled (Prometheus + Zipkin), custom images and ports",
        {
            "monitor": {
                "enabled": True,
                "prometheus": {
                    "image": {"repository": "registry.example:5000/prom/prometheus", "tag": "v2.53.3"},
                    "port": 9091,
                    "scrapeInterval": "30s",
                    "retention": "2d",
                    "resources": {"requests": {"cpu": "200m", "memory": "512Mi"}},
                },
                "zipkin": {
                    "image": {"repository": "openzipkin/zipkin-slim", "tag": "3.4.3"},
                    "serviceName": "traces",
                    "port": 9412,
                    "resources": {"limits": {"memory": "2Gi"}},
                },
            },
        },
    ),
    (
        "custom images, ports, names, sds TLS, NodePort gateway",
        {
            "nameOverride": "mesh",
            "clusterDomain": "corp.internal",
            "control": {
                "image": {"repository": "registry.example/tm/control", "tag": "0.1.0-rc1"},
                "xdsPort": 18000,
                "httpPort": 18080,
                "service": {"type": "NodePort"},
            },
            "agent": {
                "image": {"repository": "registry.example/tm/agent", "tag": "0.1.0-rc1"},
                "metricsPort": 16090,
                "hostPaths": {"bpffs": "/run/bpf"},
            },
            "ingress": {
                "httpPort": 10080,
                "httpsPort": 10443,
                "tls": "sds",
                "service": {
                    "name": "edge",
                    "type": "NodePort",
                    "httpPort": 8081,
                    "httpsPort": 8444,
                    "externalTrafficPolicy": "Local",
                },
            },
        },
    ),
    (
        "ingress disabled, external control plane IP and Zipkin, no stats listener",
        {
            "fullnameOverride": "traffic",
            "ingress": {"enabled": False},
            "envoy": {"statsPort": 0},
            "agent": {"controlPlaneAddress": "10.96.0.20:15010"},
            "control": {"zipkinAddress": "zipkin.observability.svc.cluster.local:9411"},
        },
    ),
    (
        "gateway on an IPv6 control plane address",
        {"agent": {"controlPlaneAddress": "[fd00:10:96::20]:15010"}},
    ),
    (
        "scheduling, resources, annotations, tuning, Istio's outbound policy name",
        {
            "imagePullSecrets": [{"name": "regcred"}],
            "meshConfig": {"outboundTrafficPolicy": {"mode": "ALLOW_ANY"}},
            "agent": {
                "resyncSeconds": 30,
                "concurrency": 8,
                "readyTimeoutSeconds": 60,
                "listenersTimeoutSeconds": 90,
                "sidecarFailure": "open",
                "logLevel": "traffic_agent=debug,info",
                "resources": {"requests": {"cpu": 1, "memory": "128Mi"}},
                "nodeSelector": {"node-role.example/mesh": "true"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "mesh", "effect": "NoSchedule"}],
                "priorityClassName": "system-node-critical",
                "podAnnotations": {"example.com/team": "net"},
            },
            "control": {
                "replicas": 2,
                "debounceMs": 250,
                "logLevel": "debug",
                "resources": {"limits": {"cpu": "2", "memory": "2Gi"}},
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "tolerations": [{"operator": "Exists", "effect": "NoExecute"}],
                "affinity": {
                    "podAntiAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {
                                "weight": 100,
                                "podAffinityTerm": {
                                    "topologyKey": "kubernetes.io/hostname",
                                    "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "control"}},
                                },
                            }
                        ]
                    }
                },
                "podAnnotations": {"example.com/team": "net"},
            },
            "ingress": {
                "replicas": 3,
                "resources": {"requests": {"cpu": "500m"}},
                "nodeSelector": {"node-role.example/edge": "true"},
                "tolerations": [{"key": "edge", "operator": "Exists"}],
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}
                            ]
                        }
                    }
                },
                "podAnnotations": {"example.com/team": "edge"},
                "podLabels": {"istio": "edge-gateway"},
                "service": {
                    "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"},
                    "loadBalancerSourceRanges": ["10.0.0.0/8", "2001:db8::/32"],
                },
            },
        },
    ),
]

# Values the schema must refuse (and with them render and lint must fail).
BAD_VALUES: list[tuple[str, dict[str, Any]]] = [
    ("redirectMode not auto|ebpf|iptables", {"agent": {"redirectMode": "bpf"}}),
    ("sidecarFailure not closed|open", {"agent": {"sidecarFailure": "fail-open"}}),
    ("runtime not docker|containerd|auto", {"agent": {"runtime": "cri-o"}}),
    ("containerd namespace with a slash", {"agent": {"containerdNamespace": "a/b"}}),
    ("outboundPolicy not block|passthrough", {"control": {"outboundPolicy": "allow"}}),
    ("outboundTrafficPolicy.mode not ALLOW_ANY|REGISTRY_ONLY", {"meshConfig": {"outboundTrafficPolicy": {"mode": "ALLOW_SOME"}}}),
    ("unknown key", {"agent": {"redirect_mode": "ebpf"}}),
    ("unknown top-level key", {"gateway": {"enabled": True}}),
    ("port out of range", {"envoy": {"statsPort": 70000}}),
    ("privileged gateway listener port", {"ingress": {"httpPort": 80}}),
    ("pull policy", {"imagePullPolicy": "Sometimes"}),
    ("ADS flavour", {"envoy": {"adsApi": "rest"}}),
    ("control plane address without port", {"agent": {"controlPlaneAddress": "traffic-control"}}),
    ("relative host path", {"agent": {"hostPaths": {"cgroup2": "sys/fs/cgroup"}}}),
    ("boolean as string", {"monitor": {"enabled": "yes"}}),
    ("Prometheus duration", {"monitor": {"prometheus": {"retention": "two days"}}}),
    ("Service type", {"ingress": {"service": {"type": "External"}}}),
    ("Service name", {"ingress": {"service": {"name": "Traffic_Ingress"}}}),
    ("zero replicas of the control plane", {"control": {"replicas": 0}}),
    ("crds.install as a string", {"crds": {"install": "no"}}),
    ("plaintext xDS without insecureDevelopment", {"xds": {"tls": False}}),
    ("unauthenticated xDS without insecureDevelopment", {"xds": {"auth": False}}),
    ("sidecar token shorter than the TokenRequest minimum", {"xds": {"sidecarTokenSeconds": 60}}),
]

# Values that only render with another value set (checked "alone" on top of these).
PREREQUISITES: list[tuple[str, dict[str, Any]]] = [
    ("monitor.prometheus.", {"monitor": {"enabled": True}}),
    ("monitor.zipkin.", {"monitor": {"enabled": True}}),
    ("xds.auth", {"xds": {"insecureDevelopment": True}}),
    ("xds.tls", {"xds": {"insecureDevelopment": True}}),
]


class Failures:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")
        print(f"  FAIL {where}: {what}", flush=True)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# ---------------------------------------------------------------------------------------------
# Kubernetes OpenAPI v2 -> strict JSON Schema


def strict_schema(node: Any, preserve: bool = False) -> Any:
    """One OpenAPI v2 schema node as JSON Schema (draft 4), with unknown fields forbidden."""
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return {"$ref": node["$ref"]}
    out = {k: v for k, v in node.items() if k not in ("description", "properties", "items", "additionalProperties")}
    if node.get("format") == "int-or-string" or node.get("x-kubernetes-int-or-string"):
        return {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    if node.get("format") == "int32":
        out.update(minimum=-(2**31), maximum=2**31 - 1)
    keep_unknown = preserve or node.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in node:
        out["properties"] = {k: strict_schema(v) for k, v in node["properties"].items()}
        if "additionalProperties" not in node and not keep_unknown:
            out["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = strict_schema(node["additionalProperties"])
    elif "additionalProperties" in node:
        out["additionalProperties"] = node["additionalProperties"]
    if "items" in node:
        out["items"] = strict_schema(node["items"])
    return out


class KubeSchema:
    def __init__(self, path: Path) -> None:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            spec = json.load(f)
        self.version = spec.get("info", {}).get("version")
        defs = {name: strict_schema(d) for name, d in spec["definitions"].items()}
        # A Quantity is a string on the wire, but YAML numbers (cpu: 1) are accepted too.
        defs["io.k8s.apimachinery.pkg.api.resource.Quantity"] = {"anyOf": [{"type": "string"}, {"type": "number"}]}
        self.defs = defs
        self.by_gvk: dict[tuple[str, str, str], str] = {}
        for name, d in spec["definitions"].items():
            gvks = d.get("x-kubernetes-group-version-kind", [])
            if len(gvks) == 1:  # several: shared meta types (DeleteOptions, WatchEvent)
                g = gvks[0]
                self.by_gvk[(g["group"], g["version"], g["kind"])] = name
        self.validators: dict[str, jsonschema.Draft4Validator] = {}

    def validate(self, obj: dict[str, Any]) -> list[str]:
        api_version = obj.get("apiVersion", "")
        group, _, version = api_version.rpartition("/")
        name = self.by_gvk.get((group, version, obj.get("kind", "")))
        if name is None:
            return [f"{api_version} {obj.get('kind')} is not served by Kubernetes {self.version}"]
        if name not in self.validators:
            self.validators[name] = jsonschema.Draft4Validator({"definitions": self.defs, "$ref": f"#/definitions/{name}"})
        errors = []
        for e in sorted(self.validators[name].iter_errors(obj), key=lambda e: list(e.absolute_path)):
            path = ".".join(str(p) for p in e.absolute_path) or "(root)"
            errors.append(f"{path}: {e.message[:300]}")
        return errors


def self_test(kube: KubeSchema, fail: Failures) -> None:
    """The validator itself: it must accept a good object and find each planted mistake."""
    good = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s", "labels": {"a": "b"}},
        "spec": {"ports": [{"port": 80, "targetPort": "http"}, {"port": 81, "targetPort": 8081}]},
    }
    if kube.validate(good):
        fail.add("validator", f"rejects a valid Service: {kube.validate(good)}")
    pod = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": 1, "memory": "1Gi"}}}]},
            },
        },
    }
    if kube.validate(pod):
        fail.add("validator", f"rejects a valid Deployment: {kube.validate(pod)}")
    bad = [
        ("unknown field", merge(good, {"spec": {"portz": []}})),
        ("unknown nested field", merge(pod, {"spec": {"template": {"spec": {"hostPid": True}}}})),
        ("wrong type", merge(good, {"spec": {"ports": [{"port": "80"}]}})),
        ("int-or-string of another type", merge(good, {"spec": {"ports": [{"port": 80, "targetPort": [1]}]}})),
        ("missing required field", {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {}}),
        ("int32 overflow", merge(good, {"spec": {"ports": [{"port": 2**32}]}})),
        ("null where an object is expected", merge(good, {"metadata": {"annotations": None}})),
        ("kind not served by 1.20", {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "e"}}),
    ]
    for what, obj in bad:
        if not kube.validate(obj):
            fail.add("validator", f"accepts an object with {what}")


# ---------------------------------------------------------------------------------------------
# Rendering


def render(chart: helm.Chart, values: dict[str, Any], namespace: str = NAMESPACE) -> dict[str, str]:
    return chart.render(values=values, name=RELEASE, namespace=namespace, is_install=True)


def objects_of(manifests: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt") or not text.strip():
            continue
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            out.append((template, doc))
    return out


def key_of(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


# ---------------------------------------------------------------------------------------------
# How the objects fit together


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj.get("kind") in ("Deployment", "DaemonSet", "StatefulSet"):
        return obj["spec"]["template"]["spec"]
    return None


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "<from>") for e in container.get("env", [])}


def check_consistency(label: str, values: dict[str, Any], objs: list[dict[str, Any]], fail: Failures) -> None:
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    names = [key_of(o) for o in objs]
    for dup in {n for n in names if names.count(n) > 1}:
        fail.add(label, f"{dup} rendered twice")

    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
    for o in objs:
        ns = o["metadata"].get("namespace")
        if o["kind"] in cluster_scoped:
            if ns is not None:
                fail.add(label, f"{key_of(o)} is cluster-scoped but has a namespace")
        elif ns != NAMESPACE:
            fail.add(label, f"{key_of(o)} has namespace {ns!r}, not the release namespace")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", o["metadata"]["name"]) or len(o["metadata"]["name"]) > 63:
            fail.add(label, f"{key_of(o)}: invalid name")

    workloads = [o for o in objs if pod_spec(o) is not None]
    for w in workloads:
        tmpl_labels = w["spec"]["template"]["metadata"].get("labels", {})
        sel = w["spec"]["selector"]["matchLabels"]
        if any(tmpl_labels.get(k) != v for k, v in sel.items()):
            fail.add(label, f"{key_of(w)}: selector {sel} does not match its pod labels")
        spec = pod_spec(w)
        assert spec is not None
        sa = spec.get("serviceAccountName")
        if sa and sa not in by_kind.get("ServiceAccount", {}):
            fail.add(label, f"{key_of(w)}: ServiceAccount {sa} is not rendered")
        sources = [vol.get("configMap", {}) for vol in spec.get("volumes", [])]
        sources += [s.get("configMap", {}) for vol in spec.get("volumes", []) for s in vol.get("projected", {}).get("sources", [])]
        for src in sources:
            cm = src.get("name")
            # The xDS CA's ConfigMap is published by the control plane at run time (optional).
            if cm == values["xds"]["caName"] and src.get("optional") is True:
                continue
            if cm and cm not in by_kind.get("ConfigMap", {}):
                fail.add(label, f"{key_of(w)}: ConfigMap {cm} is not rendered")
        for c in spec["containers"]:
            mounts = {m["name"] for m in c.get("volumeMounts", [])}
            vols = {v["name"] for v in spec.get("volumes", [])}
            if mounts - vols:
                fail.add(label, f"{key_of(w)}: mounts without volume {mounts - vols}")
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe"):
                port = (c.get(probe) or {}).get("httpGet", {}).get("port") or (c.get(probe) or {}).get("tcpSocket", {}).get("port")
                if isinstance(port, str) and port not in ports:
                    fail.add(label, f"{key_of(w)}: {probe} names port {port} the container lacks")
            if values["imagePullPolicy"] != c.get("imagePullPolicy"):
                fail.add(label, f"{key_of(w)}: imagePullPolicy is not the chart value")

    for svc in by_kind.get("Service", {}).values():
        selected = [
            w
            for w in workloads
            if all(w["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in svc["spec"]["selector"].items())
        ]
        if len(selected) != 1:
            fail.add(label, f"{key_of(svc)} selects {len(selected)} workloads")
            continue
        container_ports = {p["name"]: p["containerPort"] for c in pod_spec(selected[0])["containers"] for p in c.get("ports", [])}  # type: ignore[index]
        for p in svc["spec"]["ports"]:
            if p["targetPort"] not in container_ports:
                fail.add(label, f"{key_of(svc)}: targetPort {p['targetPort']} is no container port of {key_of(selected[0])}")

    for b in list(by_kind.get("ClusterRoleBinding", {}).values()):
        if b["roleRef"]["name"] not in by_kind.get("ClusterRole", {}):
            fail.add(label, f"{key_of(b)}: ClusterRole {b['roleRef']['name']} is not rendered")
        for s in b["subjects"]:
            if s["name"] not in by_kind.get("ServiceAccount", {}) or s.get("namespace") != NAMESPACE:
                fail.add(label, f"{key_of(b)}: subject {s} is not a rendered ServiceAccount")

    check_components(label, values, by_kind, fail)


def control_rbac_rules() -> list[dict[str, Any]]:
    return yaml.safe_load(CONTROL_RBAC.read_text())["rules"]


def check_components(label: str, v: dict[str, Any], by_kind: dict[str, dict[str, dict[str, Any]]], fail: Failures) -> None:
    """What each component needs, from the agent's and control plane's flags and translation."""
    ds = list(by_kind.get("DaemonSet", {}).values())
    deploys = by_kind.get("Deployment", {})
    comp = lambda o: o["metadata"]["labels"]["app.kubernetes.io/component"]  # noqa: E731
    control = [d for d in deploys.values() if comp(d) == "control"]
    gateway = [d for d in deploys.values() if comp(d) == "ingress-gateway"]
    if len(ds) != 1 or len(control) != 1:
        fail.add(label, "expected one agent DaemonSet and one control plane Deployment")
        return
    control_svc = [s for s in by_kind["Service"].values() if comp(s) == "control"][0]
    xds_port = [p["port"] for p in control_svc["spec"]["ports"] if p["targetPort"] == "xds"][0]
    expected_addr = v["agent"]["controlPlaneAddress"] or (
        f"{control_svc['metadata']['name']}.{NAMESPACE}.svc.{v['clusterDomain']}:{xds_port}"
    )

    # Agent: privileged, host pid namespace, host paths, flags through env.
    spec = ds[0]["spec"]["template"]["spec"]
    agent = spec["containers"][0]
    env = env_of(agent)
    if not spec.get("hostPID") or not agent.get("securityContext", {}).get("privileged"):
        fail.add(label, "agent must be privileged with hostPID")
    if env.get("TRAFFIC_CONTROL_PLANE") != expected_addr:
        fail.add(label, f"agent dials {env.get('TRAFFIC_CONTROL_PLANE')}, the control Service is {expected_addr}")
    if env.get("TRAFFIC_REDIRECT_MODE") != v["agent"]["redirectMode"]:
        fail.add(label, "agent redirect mode is not the chart value")
    if env.get("TRAFFIC_AGENT_SIDECAR_FAILURE") != v["agent"]["sidecarFailure"]:
        fail.add(label, "agent sidecar failure mode is not the chart value")
    if env.get("TRAFFIC_AGENT_LISTENERS_TIMEOUT_SECONDS") != str(v["agent"]["listenersTimeoutSeconds"]):
        fail.add(label, "agent listeners timeout is not the chart value")
    if env.get("NODE_NAME") != "<from>" or env.get("POD_NAME") != "<from>":
        fail.add(label, "NODE_NAME/POD_NAME must come from the downward API")
    host = {vol["name"]: vol["hostPath"]["path"] for vol in spec["volumes"] if "hostPath" in vol}
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    hp = v["agent"]["hostPaths"]
    want = {
        "cgroup2": (hp["cgroup2"], hp["cgroup2"]),
        "bpffs": (hp["bpffs"], "/sys/fs/bpf"),
        "state": (hp["state"], "/run/traffic-manager"),
    }
    runtime = v["agent"]["runtime"]
    if runtime != "containerd":
        want["docker-socket"] = (hp["dockerSocket"], "/var/run/docker.sock")
    elif "docker-socket" in host:
        fail.add(label, "runtime=containerd must not mount the Docker socket")
    if runtime != "docker":
        # containerd opens these by host path: same path inside the agent.
        sock_dir = hp["containerdSocket"].rsplit("/", 1)[0]
        want["containerd-socket-dir"] = (sock_dir, sock_dir)
        want["containerd-state"] = (hp["containerdState"], hp["containerdState"])
        want["cri-root"] = (hp["criRoot"], hp["criRoot"])
        if not mounts.get("cri-root", {}).get("readOnly"):
            fail.add(label, "the CRI root must be mounted read-only")
    elif "containerd-socket-dir" in host:
        fail.add(label, "runtime=docker must not mount containerd's socket")
    if env.get("TRAFFIC_AGENT_RUNTIME") != runtime:
        fail.add(label, "agent runtime is not the chart value")
    for var, key in [
        ("TRAFFIC_CONTAINERD_SOCKET", "containerdSocket"),
        ("TRAFFIC_CONTAINERD_STATE_DIR", "containerdState"),
        ("TRAFFIC_CONTAINERD_CRI_ROOT", "criRoot"),
    ]:
        if env.get(var) != hp[key]:
            fail.add(label, f"{var} is {env.get(var)}, want {hp[key]}")
    if env.get("TRAFFIC_CONTAINERD_NAMESPACE") != v["agent"]["containerdNamespace"]:
        fail.add(label, "containerd namespace is not the chart value")
    for name, (hpath, cpath) in want.items():
        if host.get(name) != hpath or mounts.get(name, {}).get("mountPath") != cpath:
            fail.add(label, f"agent volume {name}: host {host.get(name)} at {mounts.get(name, {}).get('mountPath')}, want {hpath} at {cpath}")
    if mounts.get("bpffs", {}).get("mountPropagation") != v["agent"]["bpffsMountPropagation"]:
        fail.add(label, "bpffs mount propagation is not the chart value")
    if env.get("DOCKER_HOST") != "unix:///var/run/docker.sock":
        fail.add(label, "DOCKER_HOST must name the mounted socket")

    # Control plane: flags, and exactly the RBAC of control/kube-source/rbac.yaml.
    cenv = env_of(control[0]["spec"]["template"]["spec"]["containers"][0])
    # meshConfig.outboundTrafficPolicy.mode (Istio's ALLOW_ANY / REGISTRY_ONLY, which the control
    # plane reads as passthrough / block) wins over control.outboundPolicy when set.
    want_policy = v["meshConfig"]["outboundTrafficPolicy"]["mode"] or v["control"]["outboundPolicy"]
    if cenv.get("TRAFFIC_CONTROL_OUTBOUND_POLICY") != want_policy:
        fail.add(label, "control plane outbound policy is not the chart value")
    zipkin = v["control"]["zipkinAddress"] or (
        f"{v['monitor']['zipkin']['serviceName']}.{NAMESPACE}.svc.{v['clusterDomain']}:{v['monitor']['zipkin']['port']}"
        if v["monitor"]["enabled"]
        else None
    )
    if cenv.get("TRAFFIC_CONTROL_ZIPKIN") != zipkin:
        fail.add(label, f"control plane Zipkin is {cenv.get('TRAFFIC_CONTROL_ZIPKIN')}, want {zipkin}")
    if v["monitor"]["enabled"] and not v["control"]["zipkinAddress"]:
        zsvc = by_kind["Service"].get(v["monitor"]["zipkin"]["serviceName"])
        if not zsvc or zsvc["spec"]["ports"][0]["port"] != v["monitor"]["zipkin"]["port"]:
            fail.add(label, "the Zipkin Service the control plane points at is not rendered")
    crole = [r for r in by_kind["ClusterRole"].values() if comp(r) == "control"][0]
    if crole["rules"] != control_rbac_rules():
        fail.add(label, "control plane ClusterRole differs from control/kube-source/rbac.yaml")
    check_xds_auth(label, v, by_kind, cenv, env, spec, fail)

    # Ingress gateway: node id traffic-ingress, Service traffic-ingress 80/443 -> the listener
    # ports the control plane is told to give the gateway, no API token.
    if not v["ingress"]["enabled"]:
        if gateway:
            fail.add(label, "ingress disabled but the gateway is rendered")
        return
    if len(gateway) != 1:
        fail.add(label, "expected one gateway Deployment")
        return
    gspec = gateway[0]["spec"]["template"]["spec"]
    if gspec.get("automountServiceAccountToken") is not False:
        fail.add(label, "the gateway must not mount an API token")
    gports = {p["name"]: p["containerPort"] for p in gspec["containers"][0]["ports"]}
    if (gports.get("http"), gports.get("https")) != (
        int(cenv["TRAFFIC_CONTROL_INGRESS_HTTP_PORT"]),
        int(cenv["TRAFFIC_CONTROL_INGRESS_HTTPS_PORT"]),
    ):
        fail.add(label, f"gateway container ports {gports} differ from the control plane's ingress listener ports")
    gsvc = by_kind["Service"].get(v["ingress"]["service"]["name"])
    if gsvc is None or gsvc["spec"]["type"] != v["ingress"]["service"]["type"]:
        fail.add(label, "gateway Service missing or of the wrong type")
    else:
        ports = {p["name"]: (p["port"], p["targetPort"]) for p in gsvc["spec"]["ports"]}
        want_ports = {
            "http": (v["ingress"]["service"]["httpPort"], "http"),
            "https": (v["ingress"]["service"]["httpsPort"], "https"),
        }
        if ports != want_ports:
            fail.add(label, f"gateway Service ports {ports}, want {want_ports}")
    boot = yaml.safe_load(by_kind["ConfigMap"][gspec["volumes"][0]["configMap"]["name"]]["data"]["envoy.yaml"])
    if boot["node"]["id"] != "traffic-ingress":
        fail.add(label, "gateway node id must be traffic-ingress")
    sa = boot["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    host_part = expected_addr.rsplit(":", 1)[0].strip("[]")
    if (sa["address"], sa["port_value"]) != (host_part, int(expected_addr.rsplit(":", 1)[1])):
        fail.add(label, f"gateway dials {sa}, want {expected_addr}")
    if boot["admin"]["address"]["socket_address"] != {"address": "127.0.0.1", "port_value": v["envoy"]["adminPort"]}:
        fail.add(label, "gateway admin must be on 127.0.0.1:<envoy.adminPort> (the stats listener's target)")


def rules_of(by_kind: dict[str, dict[str, dict[str, Any]]], kind: str, component: str) -> list[dict[str, Any]]:
    return [
        r
        for o in by_kind.get(kind, {}).values()
        if o["metadata"]["labels"]["app.kubernetes.io/component"] == component
        for r in o["rules"]
    ]


def check_xds_auth(
    label: str,
    v: dict[str, Any],
    by_kind: dict[str, dict[str, dict[str, Any]]],
    cenv: dict[str, str],
    aenv: dict[str, str],
    agent_spec: dict[str, Any],
    fail: Failures,
) -> None:
    """xds.auth / xds.tls reach the control plane, the agent and the gateway; RBAC grows only then."""
    x = v["xds"]
    if cenv.get("TRAFFIC_CONTROL_XDS_AUTH") != str(x["auth"]).lower() or aenv.get("TRAFFIC_AGENT_XDS_AUTH") != str(x["auth"]).lower():
        fail.add(label, "xds.auth does not reach the control plane and the agent")
    if cenv.get("TRAFFIC_CONTROL_XDS_TLS") != str(x["tls"]).lower() or (x["tls"] != ("TRAFFIC_AGENT_XDS_CA_FILE" in aenv)):
        fail.add(label, "xds.tls does not reach the control plane and the agent")
    if x["tls"] and aenv.get("TRAFFIC_AGENT_XDS_SERVER_NAME") not in cenv.get("TRAFFIC_CONTROL_XDS_TLS_NAMES", "").split(","):
        fail.add(label, "the name the sidecars verify is not in the xDS certificate's names")
    token_review = {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}
    sa_token = {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}
    if (token_review in rules_of(by_kind, "ClusterRole", "control-xds")) != x["auth"]:
        fail.add(label, "tokenreviews create must be granted exactly when xds.auth")
    if (sa_token in rules_of(by_kind, "ClusterRole", "agent")) != x["auth"]:
        fail.add(label, "serviceaccounts/token create must be granted to the agent exactly when xds.auth")
    ca_rules = rules_of(by_kind, "Role", "control-xds")
    if x["tls"] != bool(ca_rules) or any(r["resources"] == ["secrets"] and r.get("resourceNames") != [x["caName"]] for r in ca_rules):
        fail.add(label, "the CA Role must exist exactly with xds.tls and read no Secret but xds.caName")
    agent_tokens = [vol for vol in agent_spec["volumes"] if vol["name"] == "xds-tokens"]
    if x["auth"] and (not agent_tokens or agent_tokens[0]["hostPath"]["path"] != aenv.get("TRAFFIC_AGENT_XDS_TOKEN_DIR")):
        fail.add(label, "the agent's token directory must be the host path it names")
    for d in by_kind.get("Deployment", {}).values():
        if d["metadata"]["labels"]["app.kubernetes.io/component"] != "ingress-gateway":
            continue
        gspec = d["spec"]["template"]["spec"]
        tokens = [
            s["serviceAccountToken"]
            for vol in gspec["volumes"]
            for s in vol.get("projected", {}).get("sources", [])
            if "serviceAccountToken" in s
        ]
        want = [{"audience": "traffic-control", "expirationSeconds": x["gatewayTokenSeconds"], "path": "token"}] if x["auth"] else []
        if tokens != want:
            fail.add(label, f"gateway projected tokens {tokens}, want {want}")
        gw_sa = f"{NAMESPACE}/{gspec['serviceAccountName']}"
        if x["auth"] and cenv.get("TRAFFIC_CONTROL_GATEWAY_SERVICE_ACCOUNTS") != gw_sa:
            fail.add(label, f"the control plane's gateway identity is {cenv.get('TRAFFIC_CONTROL_GATEWAY_SERVICE_ACCOUNTS')}, want {gw_sa}")


# Where the gateway's bootstrap expects its xDS credentials (tm.gatewayXdsDir); validation
# points it at a directory with a throwaway CA and token instead.
GATEWAY_XDS_DIR = "/var/run/traffic-xds"


def fake_gateway_credentials(d: str) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.crt", "-days", "1", "-subj", "/CN=check-chart"],
        check=True, capture_output=True,
    )
    Path(d, "token").write_text("token")
    Path(d, "xds-token-sds.yaml").write_text(
        "resources:\n- '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n"
        f"  name: xds-token\n  generic_secret: {{secret: {{filename: {d}/token}}}}\n"
    )


def validate_envoy_bootstraps(label: str, objs: list[dict[str, Any]], envoy: str, fail: Failures) -> int:
    n = 0
    for o in objs:
        if o["kind"] == "ConfigMap" and "envoy.yaml" in o.get("data", {}):
            with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f, tempfile.TemporaryDirectory() as creds:
                fake_gateway_credentials(creds)
                f.write(o["data"]["envoy.yaml"].replace(GATEWAY_XDS_DIR, creds))
                f.flush()
                r = subprocess.run(
                    [envoy, "--mode", "validate", "-c", f.name, "--log-level", "error"],
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
            n += 1
            if r.returncode != 0:
                fail.add(label, f"envoy --mode validate rejects the gateway bootstrap: {r.stdout}{r.stderr}")
    return n


def check_prometheus(label: str, v: dict[str, Any], objs: list[dict[str, Any]], fail: Failures) -> None:
    cms = [o for o in objs if o["kind"] == "ConfigMap" and "prometheus.yml" in o.get("data", {})]
    if not v["monitor"]["enabled"]:
        if cms:
            fail.add(label, "Prometheus rendered with monitor.enabled=false")
        return
    if len(cms) != 1:
        fail.add(label, "monitor.enabled renders no Prometheus configuration")
        return
    conf = yaml.safe_load(cms[0]["data"]["prometheus.yml"])
    jobs = {j["job_name"]: j for j in conf["scrape_configs"]}
    envoy = jobs.get("envoy")
    if not envoy or envoy.get("metrics_path") != "/stats/prometheus" or envoy["kubernetes_sd_configs"][0]["role"] != "pod":
        fail.add(label, "Prometheus has no pod-discovered /stats/prometheus job")
        return
    # The keep rule must keep a pod with a sidecar and this release's gateway, and drop the rest.
    keep = envoy["relabel_configs"][0]
    rx = re.compile(f"^(?:{keep['regex']})$")
    cases = {
        ("abc123", "", ""): True,
        ("", RELEASE, "ingress-gateway"): True,
        ("", "", ""): False,
        ("", RELEASE, "control"): False,
    }
    for labels, kept in cases.items():
        if bool(rx.match(";".join(labels))) != kept:
            fail.add(label, f"Prometheus keep rule on {labels}: kept={not kept}")
    addr = [r for r in envoy["relabel_configs"] if r.get("target_label") == "__address__"][0]
    if addr["replacement"] != f"${{1}}:{v['envoy']['statsPort']}":
        fail.add(label, "Prometheus does not scrape envoy.statsPort")


def leaf_paths(schema: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of the values the schema describes as one value (no nested properties)."""
    if "properties" not in schema:
        return [prefix]
    out = []
    for k, sub in schema["properties"].items():
        out.extend(leaf_paths(sub, prefix + (k,)))
    return out


def get_path(d: Any, path: tuple[str, ...]) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return KeyError
        d = d[p]
    return d


def set_path(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cur = out
    for p in path[:-1]:
        cur = cur.setdefault(p, {})
    cur[path[-1]] = value
    return out


def check_values_documented(leaves: list[tuple[str, ...]], fail: Failures) -> None:
    """Every value of values.yaml has a `# --` comment right above it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    documented: set[tuple[str, ...]] = set()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z0-9_]+):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        path = tuple(k for _, k in stack)
        j = i - 1
        comment_block = []
        while j >= 0 and lines[j].strip().startswith("#"):
            comment_block.append(lines[j].strip())
            j -= 1
        if any(c.startswith("# --") for c in comment_block):
            documented.add(path)
    for leaf in leaves:
        if leaf not in documented:
            fail.add("values.yaml", f"{'.'.join(leaf)} has no '# --' comment")


# ---------------------------------------------------------------------------------------------


def kubectl_reachable() -> bool:
    if not os.environ.get("KUBECONFIG") or not shutil.which("kubectl"):
        return False
    r = subprocess.run(["kubectl", "get", "--raw", "/readyz"], capture_output=True, text=True, timeout=20)
    return r.returncode == 0


def server_dry_run(label: str, chart: helm.Chart, values: dict[str, Any], fail: Failures) -> int:
    # The namespace must exist for a server-side dry run; `default` always does.
    objs = [o for _, o in objects_of(render(chart, values, namespace="default"))]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump_all(objs, f)
        f.flush()
        r = subprocess.run(
            ["kubectl", "apply", "--dry-run=server", "--validate=true", "-o", "name", "-f", f.name],
            capture_output=True,
            text=True,
            timeout=120,
        )
    if r.returncode != 0:
        fail.add(label, f"kubectl apply --dry-run=server: {r.stderr.strip()}")
        return 0
    accepted = len([l for l in r.stdout.splitlines() if l.strip()])
    if accepted != len(objs):
        fail.add(label, f"API server accepted {accepted} of {len(objs)} objects")
    return accepted


def dry_run_only() -> int:
    if not kubectl_reachable():
        print("FAIL: the API server is not reachable (KUBECONFIG, kubectl)")
        return 1
    fail = Failures()
    total = 0
    with helm.Chart.load(CHART) as chart:
        for label, over in VALUE_SETS:
            n = server_dry_run(label, chart, over, fail)
            total += n
            print(f"ok  {label}: API server dry run accepted {n} objects" if n else f"    {label}: failed")
    print(f"\n{len(VALUE_SETS)} value sets, {total} objects accepted by the API server (kubectl apply --dry-run=server)")
    return 1 if fail.items else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server-dry-run", choices=["auto", "on", "off"], default="auto")
    ap.add_argument(
        "--server-dry-run-only",
        action="store_true",
        help="only send each value set's rendering to the API server (kubectl apply --dry-run=server)",
    )
    args = ap.parse_args()
    if args.server_dry_run_only:
        return dry_run_only()

    fail = Failures()
    print(f"Helm SDK {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__}), chart {CHART}")
    kube = KubeSchema(OPENAPI)
    print(f"Kubernetes OpenAPI {kube.version}: {len(kube.by_gvk)} kinds")
    self_test(kube, fail)
    envoy = os.environ.get("ENVOY_BIN")
    dry_run = args.server_dry_run == "on" or (args.server_dry_run == "auto" and kubectl_reachable())
    if args.server_dry_run == "on" and not kubectl_reachable():
        print("FAIL: --server-dry-run=on but the API server is not reachable (KUBECONFIG, kubectl)")
        return 1

    with helm.Chart.load(CHART) as chart:
        defaults = chart.values
        schema = chart.schema
        assert schema is not None, "the chart ships no values.schema.json"
        leaves = leaf_paths(schema)
        check_values_documented(leaves, fail)

        # Every value is changed by some value set.
        covered: dict[tuple[str, ...], Any] = {}
        for _, over in VALUE_SETS:
            for leaf in leaves:
                val = get_path(over, leaf)
                if val is not KeyError and val != get_path(defaults, leaf) and leaf not in covered:
                    covered[leaf] = val
        for leaf in leaves:
            if leaf not in covered:
                fail.add("value sets", f"no value set changes {'.'.join(leaf)}")

        total_objects = 0
        total_dry = 0
        bootstraps = 0
        for label, over in VALUE_SETS:
            values = merge(defaults, over)
            try:
                chart.validate_schema(over)
                manifests = render(chart, over)
            except helm.HelmError as e:
                fail.add(label, f"does not render: {e}")
                continue
            report = helm.lint(CHART, over, strict=True, namespace=NAMESPACE, kube_version=KUBE_VERSION)
            for m in report["messages"]:
                if m["severity"] >= 2:
                    fail.add(label, f"lint {m['path']}: {m['error'].strip()}")
            for e in report["errors"]:
                fail.add(label, f"lint: {e.strip()}")
            if not manifests.get("traffic-manager/templates/NOTES.txt", "").strip():
                fail.add(label, "NOTES.txt renders empty")
            objs = objects_of(manifests)
            for template, o in objs:
                for err in kube.validate(o):
                    fail.add(label, f"{template} {key_of(o)}: {err}")
            plain = [o for _, o in objs]
            check_consistency(label, values, plain, fail)
            check_prometheus(label, values, plain, fail)
            if envoy:
                bootstraps += validate_envoy_bootstraps(label, plain, envoy, fail)
            dry = server_dry_run(label, chart, over, fail) if dry_run else 0
            total_objects += len(objs)
            total_dry += dry
            kinds = sorted({o["kind"] for o in plain})
            print(f"ok  {label}: {len(objs)} objects valid ({', '.join(kinds)})" + (f"; API server dry run accepted {dry}" if dry_run else ""))

        # Each value, changed alone, changes the rendering.
        for leaf, val in covered.items():
            dotted = ".".join(leaf)
            base: dict[str, Any] = {}
            for prefix, pre in PREREQUISITES:
                if dotted.startswith(prefix):
                    base = merge(base, pre)
            try:
                before = render(chart, base)
                after = render(chart, merge(base, set_path(leaf, val)))
            except helm.HelmError as e:
                fail.add("values alone", f"{dotted}={val!r} does not render alone: {e}")
                continue
            if before == after:
                fail.add("values alone", f"{dotted}={val!r} does not change the rendered chart")
        print(f"ok  each of {len(covered)} values changes the rendering on its own")

        # Invalid values are refused by the schema, and so by render and lint.
        for label, bad in BAD_VALUES:
            try:
                chart.validate_schema(bad)
                fail.add("bad values", f"{label}: accepted by values.schema.json")
                continue
            except helm.HelmValuesError:
                pass
            try:
                render(chart, bad)
                fail.add("bad values", f"{label}: rendered despite the schema")
            except helm.HelmValuesError:
                pass
            if not helm.lint(CHART, bad, strict=True, kube_version=KUBE_VERSION)["errors"]:
                fail.add("bad values", f"{label}: lint passes")
        print(f"ok  {len(BAD_VALUES)} invalid value sets rejected by the schema, render and lint")

    print(
        f"\n{len(VALUE_SETS)} value sets, {total_objects} rendered objects validated against Kubernetes {kube.version} "
        f"OpenAPI (strict), {len(leaves)} values documented and covered, {bootstraps} gateway bootstraps "
        + ("validated by Envoy" if envoy else "NOT validated (ENVOY_BIN unset)")
        + (f", {total_dry} objects accepted by the API server (dry run)" if dry_run else ", API server dry run skipped (no reachable KUBECONFIG)")
    )
    if fail.items:
        print(f"\n{len(fail.items)} FAILURES")
        return 1
    print("chart OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
