"""``sm-tracing demo``: its arguments, then :func:`sm_tracing._demo.demo.run`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from sm_tracing._hints import command_parser, install_hint

DEFAULT_TIMEOUT = 25.0

_DESCRIPTION = f"""\
See one trace from a boto3 client into a model container, with no AWS account, no Docker and
no network. The demo starts an example model container (a Flask app behind
sm_tracing.WSGIMiddleware, under gunicorn), a local SageMaker runtime in front of it, and an
instrumented boto3 client; it makes a plain, a streamed and an asynchronous invocation and
prints each trace as a tree: client and container spans, with durations. Beside each tree,
where the call's time went, as its client span records it: the container's time, SageMaker's
share (the wait for the response's headers less the container's time) and, for the stream, its
time to first chunk, its chunks and the mean time per chunk.

With Python 3.12 or later and the bidi extra, it also opens a bidirectional stream
(InvokeEndpointWithBidirectionalStream) through a local HTTP/2 runtime to a WebSocket container
(sm_tracing.ASGIMiddleware, under uvicorn):
  {install_hint("demo", "bidi")}

The async invocation becomes a trace of its own in the container, linked to the client's
span: nobody waits for an async request, so it is not a child of the call that queued it.

With --otlp-endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT) every span is also exported there
over OTLP/HTTP, and each trace's Jaeger link is printed. To see them in Jaeger:

  docker run --rm -p 16686:16686 -p 4318:4318 jaegertracing/all-in-one
  sm-tracing demo --otlp-endpoint http://localhost:4318

Needs the demo extra:
  {install_hint("demo")}
Exits 0 when every trace joined (and, with --otlp-endpoint, was exported), 1 otherwise.
"""


def parser() -> argparse.ArgumentParser:
    """The arguments of ``sm-tracing demo``."""
    parser = command_parser("demo", _DESCRIPTION)
    parser.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        default=os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        help="also export every span to this OTLP/HTTP endpoint, such as Jaeger's "
        "http://localhost:4318 (default: OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, else none)",
    )
    parser.add_argument(
        "--jaeger-url",
        metavar="URL",
        default="http://localhost:16686",
        help="the Jaeger UI that trace links point to (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="give up after this long (default: %(default)s)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what sm_tracing does")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sm-tracing demo`` with *argv* (default: the command line); the exit status."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose:
        logging.getLogger("sm_tracing").setLevel(logging.DEBUG)
    from sm_tracing._demo.demo import run

    return run(
        out=sys.stdout,
        otlp_endpoint=args.otlp_endpoint or None,
        jaeger_url=args.jaeger_url,
        timeout=args.timeout,
    )
