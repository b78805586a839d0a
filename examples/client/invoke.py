"""Invoke a SageMaker endpoint with tracing, and print where to see the trace.

    pip install 'sm-tracing[otlp]'
    python invoke.py my-endpoint '{"inputs": "a good day"}' [--custom-attributes accept_eula=true]

AWS credentials and region come from the usual places (AWS_PROFILE, ~/.aws, a role). Spans
go to OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4318, e.g. the Jaeger of
examples/jaeger); the container's spans join the same trace when it runs sm_tracing too.
"""

from __future__ import annotations

import argparse
import sys

import boto3
from opentelemetry import trace

import sm_tracing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("endpoint", help="the endpoint name")
    parser.add_argument("body", nargs="?", default='{"inputs": "hello"}', help="a JSON body")
    parser.add_argument("--custom-attributes", help="your own CustomAttributes, kept as they are")
    parser.add_argument("--jaeger-url", default="http://localhost:16686")
    args = parser.parse_args(argv)

    provider = sm_tracing.configure("sagemaker-client")
    sm_tracing.instrument()  # every sagemaker-runtime client, made before or after this
    client = boto3.client("sagemaker-runtime")

    tracer = trace.get_tracer(__name__)
    with tracer.start_as_current_span("invoke.py") as span:
        extra = {"CustomAttributes": args.custom_attributes} if args.custom_attributes else {}
        response = client.invoke_endpoint(
            EndpointName=args.endpoint,
            Body=args.body,
            ContentType="application/json",
            Accept="application/json",
            **extra,
        )
        print(response["Body"].read().decode())
        if "CustomAttributes" in response:
            print(f"CustomAttributes: {response['CustomAttributes']}")
        trace_id = f"{span.get_span_context().trace_id:032x}"
    provider.force_flush()
    print(f"trace {trace_id}: {args.jaeger_url.rstrip('/')}/trace/{trace_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
