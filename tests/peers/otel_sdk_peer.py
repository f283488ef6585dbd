#!/usr/bin/env python3
"""An HTTP server that reads trace context the way OpenTelemetry's Python SDK
does, for the mesh's propagation test: for every GET it extracts the W3C
context from the request headers with the SDK's global propagator, starts a
server span under it with the SDK tracer, and answers with what it read as
JSON: {"trace_id", "parent_span_id", "span_trace_id", "sampled"}.

usage: otel_sdk_peer.py PORT
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider

trace.set_tracer_provider(TracerProvider())
TRACER = trace.get_tracer("mesh-propagation-peer")


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        ctx = propagate.extract(dict(self.headers.items()))
        parent = trace.get_current_span(ctx).get_span_context()
        with TRACER.start_as_current_span("peer", context=ctx, kind=trace.SpanKind.SERVER) as span:
            mine = span.get_span_context()
            body = json.dumps({
                "trace_id": format(parent.trace_id, "032x"),
                "parent_span_id": format(parent.span_id, "016x"),
                "sampled": bool(parent.trace_flags.sampled),
                "span_trace_id": format(mine.trace_id, "032x"),
            }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
