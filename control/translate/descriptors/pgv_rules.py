#!/usr/bin/env python3
"""Print the protoc-gen-validate rules (`validate.rules` field options) of the Envoy messages
traffic-translate emits: the constraints every value we put there must satisfy, or Envoy rejects
the whole resource (and, in state-of-the-world xDS, the whole update). The label parsers
(control/labels/src/values.rs) and the Ingress/TLS checks (control/translate/src/ingress_check.rs,
tls.rs) are derived from this list plus what Envoy checks at load time.

    python3 pgv_rules.py ~/.cargo/registry/src/*/envoy-types-0.7.7/src/generated/types.bin

Needs the `protobuf` Python package (the repo's .venv has it). Prints `message field rules`.
"""
import sys

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.internal import decoder

# Messages (and their nested ones) that translation fills in.
EMITTED = [
    "envoy.config.cluster.v3.Cluster", "envoy.config.cluster.v3.CircuitBreakers",
    "envoy.config.endpoint.v3", "envoy.config.route.v3.RouteConfiguration",
    "envoy.config.route.v3.VirtualHost", "envoy.config.route.v3.Route",
    "envoy.config.route.v3.RouteMatch", "envoy.config.route.v3.RouteAction",
    "envoy.config.route.v3.RetryPolicy", "envoy.config.route.v3.Tracing",
    "envoy.config.listener.v3.FilterChainMatch", "envoy.config.core.v3.SocketAddress",
    "envoy.config.core.v3.CidrRange", "envoy.type.v3.FractionalPercent",
    "envoy.extensions.filters.http.fault", "envoy.extensions.filters.common.fault",
    "envoy.extensions.filters.http.bandwidth_limit",
    "envoy.extensions.transport_sockets.tls.v3.TlsCertificate",
]
PGV_FIELD_RULES = 1071  # (validate.rules) extension number on FieldOptions


def rules_bytes(options: bytes):
    i = 0
    while i < len(options):
        tag, i = decoder._DecodeVarint(options, i)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, i = decoder._DecodeVarint(options, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = decoder._DecodeVarint(options, i)
            if number == PGV_FIELD_RULES:
                return options[i:i + length]
            i += length
        else:
            return None
    return None


def main(path):
    fds = descriptor_pb2.FileDescriptorSet.FromString(open(path, "rb").read())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    field_rules = message_factory.GetMessageClass(pool.FindMessageTypeByName("validate.FieldRules"))

    def walk(messages, prefix):
        for m in messages:
            full = f"{prefix}.{m.name}"
            if any(full.startswith(w) for w in EMITTED):
                for field in m.field:
                    raw = rules_bytes(field.options.SerializeToString())
                    if raw is not None:
                        text = str(field_rules.FromString(raw)).replace("\n", " ")
                        print(full, field.name, " ".join(text.split()))
            walk(m.nested_type, full)

    for f in fds.file:
        walk(f.message_type, f.package)


if __name__ == "__main__":
    main(sys.argv[1])
