"""Helper for grpc_xds.rs: a tiny gRPC backend, and a proxyless client resolving xds:/// targets.

  grpc_xds.py serve <ip> <port> <name>   # answers /test.Echo/Say with b"<name>"; prints "ready"
  grpc_xds.py call <target> [count]      # calls it through xDS (GRPC_XDS_BOOTSTRAP); prints replies
                                         # (GRPC_CALL_METADATA=name=value: a header on every call)
No generated stubs: raw-bytes handlers keep it dependency-free beyond grpcio.
"""
import os
import sys
import time
from concurrent import futures

import grpc


def serve(ip, port, name):
    def say(request, context):
        return name.encode()

    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"{ip}:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(target, count):
    timeout = float(os.environ.get("GRPC_CALL_TIMEOUT_S", "20"))
    metadata = None
    if os.environ.get("GRPC_CALL_METADATA"):
        name, _, value = os.environ["GRPC_CALL_METADATA"].partition("=")
        metadata = [(name, value)]
    with grpc.insecure_channel(target) as channel:
        say = channel.unary_unary("/test.Echo/Say")
        for _ in range(count):
            reply = say(b"hi", timeout=timeout, wait_for_ready=True, metadata=metadata)
            print(reply.decode(), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "call":
        call(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
