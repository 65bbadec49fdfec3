#!/usr/bin/env python3
"""Regenerate envoy.bin: the protobuf descriptors of every Envoy message traffic-translate emits
(plus their imports), without source info, pruned from envoy-types' own descriptor set.

    python3 prune.py ~/.cargo/registry/src/*/envoy-types-0.7.7/src/generated/types.bin envoy.bin

Needs the `protobuf` Python package (the repo's .venv has it). Bump envoy-types -> rerun.
"""
import sys

from google.protobuf import descriptor_pb2

ROOTS = [
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/transport_sockets/tls/v3/secret.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/http/fault/v3/fault.proto",
    "envoy/extensions/filters/http/bandwidth_limit/v3/bandwidth_limit.proto",
    "envoy/config/trace/v3/zipkin.proto",
    "envoy/extensions/filters/listener/original_dst/v3/original_dst.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/config/bootstrap/v3/bootstrap.proto",
    "envoy/extensions/retry/host/previous_hosts/v3/previous_hosts.proto",
    "envoy/extensions/clusters/dns/v3/dns_cluster.proto",
]

def main(src, dst):
    full = descriptor_pb2.FileDescriptorSet()
    with open(src, "rb") as f:
        full.ParseFromString(f.read())
    files = {f.name: f for f in full.file}
    keep, stack = set(), list(ROOTS)
    while stack:
        name = stack.pop()
        if name in keep:
            continue
        keep.add(name)
        stack.extend(files[name].dependency)
    out = descriptor_pb2.FileDescriptorSet()
    for f in full.file:  # keep the original (dependency-first) order
        if f.name in keep:
            g = out.file.add()
            g.CopyFrom(f)
            g.ClearField("source_code_info")
    with open(dst, "wb") as f:
        f.write(out.SerializeToString())
    print(f"{len(keep)} files, {out.ByteSize()} bytes -> {dst}")

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
