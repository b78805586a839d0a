"""Call the proxied model server through a local SageMaker runtime with an instrumented boto3
client, once plainly and once streamed, inside one span of the caller's: one trace from here,
through the proxy, into the server's own spans.

    python invoke.py [CONTAINER_URL]    # default http://127.0.0.1:8080, where the proxy listens
"""

from __future__ import annotations

import json
import sys

import boto3
from opentelemetry import trace

import sm_tracing
from sm_tracing.local import LocalRuntime

provider = sm_tracing.configure("example-client")
sm_tracing.instrument()
container = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
tracer = trace.get_tracer("example.client")

with LocalRuntime(container) as runtime:
    client = boto3.client(
        "sagemaker-runtime",
        region_name="us-east-1",
        endpoint_url=runtime.url,
        # LocalRuntime wants a signed request, not real credentials.
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    with tracer.start_as_current_span("ask the model") as span:
        response = client.invoke_endpoint(
            EndpointName="tgi",
            ContentType="application/json",
            Body=json.dumps({"inputs": "hello"}),
        )
        print(response["Body"].read().decode())
        stream = client.invoke_endpoint_with_response_stream(
            EndpointName="tgi",
            ContentType="application/json",
            Body=json.dumps({"inputs": "hello", "stream": True}),
        )
        for event in stream["Body"]:
            print(event["PayloadPart"]["Bytes"].decode(), end="")
    trace_id = f"{span.get_span_context().trace_id:032x}"
provider.force_flush()
print(json.dumps({"trace_id": trace_id}))
