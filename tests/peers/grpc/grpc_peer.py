#!/usr/bin/env python3
"""gRPC test peer on grpcio (gRPC project's Python implementation).

server: python grpc_peer.py server --port 18091 --name a [--tls-cert C --tls-key K [--tls-ca CA]]
        serves mesh.peer.v1.Echo, grpc.health.v1.Health, server reflection.
client: python grpc_peer.py client --target 127.0.0.1:18091 [-n 100] [--fail-code 14 --fail-ratio 0.5]
        [--target xds:///svc.example  with GRPC_XDS_BOOTSTRAP=...]  -> prints counts per server name.
"""
import argparse
import collections
import json
import os
import random
import sys
import time
from concurrent import futures

sys.path.insert(0, os.environ.get("MESH_PEERS_GEN", os.path.join(os.environ.get("MESH_PEERS_HOME", "/opt/mesh-peers"), "gen")))
import grpc  # noqa: E402
import echo_pb2  # noqa: E402
import echo_pb2_grpc  # noqa: E402


class Echo(echo_pb2_grpc.EchoServicer):
    def __init__(self, name):
        self.name = name

    def _maybe_fail(self, req, ctx):
        if req.delay_ms:
            time.sleep(req.delay_ms / 1000.0)
        if req.fail_code:
            ratio = req.fail_ratio if req.fail_ratio else 1.0
            if random.random() < ratio:
                ctx.abort(grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == req.fail_code)),
                          f"injected by {self.name}")

    def _resp(self, req, ctx):
        md = {k: v for k, v in ctx.invocation_metadata() if not k.endswith("-bin")}
        return echo_pb2.EchoResponse(message=req.message, server=self.name, metadata=md,
                                     padding=b"x" * req.response_bytes)

    def Echo(self, req, ctx):
        self._maybe_fail(req, ctx)
        return self._resp(req, ctx)

    def ServerStream(self, req, ctx):
        self._maybe_fail(req, ctx)
        for _ in range(int(req.message) if req.message.isdigit() else 3):
            yield self._resp(req, ctx)


def server(a):
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=a.workers))
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(a.name), s)
    hs = health.HealthServicer()
    hs.set("", health_pb2.HealthCheckResponse.SERVING)
    hs.set("mesh.peer.v1.Echo", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(hs, s)
    reflection.enable_server_reflection(["mesh.peer.v1.Echo", "grpc.health.v1.Health", reflection.SERVICE_NAME], s)
    addr = f"{a.host}:{a.port}"
    if a.tls_cert:
        key, cert = open(a.tls_key, "rb").read(), open(a.tls_cert, "rb").read()
        ca = open(a.tls_ca, "rb").read() if a.tls_ca else None
        creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=bool(ca))
        s.add_secure_port(addr, creds)
    else:
        s.add_insecure_port(addr)
    s.start()
    sys.stderr.write(f"grpc peer {a.name} on {addr} tls={bool(a.tls_cert)}\n")
    s.wait_for_termination()


def client(a):
    if a.tls_ca:
        creds = grpc.ssl_channel_credentials(
            open(a.tls_ca, "rb").read(),
            open(a.tls_key, "rb").read() if a.tls_key else None,
            open(a.tls_cert, "rb").read() if a.tls_cert else None)
        ch = grpc.secure_channel(a.target, creds, options=[("grpc.ssl_target_name_override", a.authority)]
                                 if a.authority else None)
    else:
        ch = grpc.insecure_channel(a.target)
    stub = echo_pb2_grpc.EchoStub(ch)
    cnt = collections.Counter()
    t0 = time.time()
    for i in range(a.n):
        try:
            r = stub.Echo(echo_pb2.EchoRequest(message=str(i), fail_code=a.fail_code, fail_ratio=a.fail_ratio,
                                               delay_ms=a.delay_ms), timeout=a.timeout)
            cnt[r.server] += 1
        except grpc.RpcError as e:
            cnt["error:" + e.code().name] += 1
    print(json.dumps({"counts": dict(cnt), "seconds": round(time.time() - t0, 3)}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=18091)
    s.add_argument("--name", default="peer")
    s.add_argument("--workers", type=int, default=32)
    c = sub.add_parser("client")
    c.add_argument("--target", default="127.0.0.1:18091")
    c.add_argument("-n", type=int, default=10)
    c.add_argument("--fail-code", type=int, default=0)
    c.add_argument("--fail-ratio", type=float, default=0.0)
    c.add_argument("--delay-ms", type=int, default=0)
    c.add_argument("--timeout", type=float, default=10.0)
    c.add_argument("--authority", default=None, help="TLS name override")
    for p in (s, c):
        p.add_argument("--tls-cert")
        p.add_argument("--tls-key")
        p.add_argument("--tls-ca")
    a = ap.parse_args()
    server(a) if a.cmd == "server" else client(a)


if __name__ == "__main__":
    main()
