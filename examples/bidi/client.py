"""Open a traced bidirectional stream, send a few messages, and print the answers and the trace.

    pip install 'sm-tracing[bidi]' h2 websockets trustme     # Python 3.12 and later
    # the container of app.py on port 8080, behind a local runtime (no AWS account needed):
    python client.py --local ws://127.0.0.1:8080 --query 'model=demo&mode=reverse' hello world
    # a real endpoint (credentials and region from the usual places, or --region):
    python client.py --endpoint my-endpoint --query 'model=demo' hello world

``sm_tracing.instrument()`` gives each stream a CLIENT span lasting the whole session, and
appends its trace context to your ``ModelQueryString``, after your own parameters: the one
field SageMaker passes to the container. Spans go to OTEL_EXPORTER_OTLP_ENDPOINT (default
http://localhost:4318, e.g. the Jaeger of examples/jaeger).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from typing import Any

from aws_sdk_sagemaker_runtime_http2.client import AsyncSageMakerRuntimeHTTP2Client
from aws_sdk_sagemaker_runtime_http2.config import AsyncSageMakerRuntimeHTTP2Config
from aws_sdk_sagemaker_runtime_http2.models import (
    InvokeEndpointWithBidirectionalStreamInput,
    RequestPayloadPart,
    RequestStreamEventPayloadPart,
)
from opentelemetry import trace

import sm_tracing


def text_part(text: str) -> RequestStreamEventPayloadPart:
    """One UTF-8 message of the request stream (a text frame on the container's WebSocket)."""
    return RequestStreamEventPayloadPart(
        value=RequestPayloadPart(bytes_=text.encode(), data_type="UTF8")
    )


async def converse(
    client: AsyncSageMakerRuntimeHTTP2Client, endpoint: str, query: str, messages: list[str]
) -> list[str]:
    """Send each message and read its answer on one stream; the answers."""
    stream = await client.invoke_endpoint_with_bidirectional_stream(
        InvokeEndpointWithBidirectionalStreamInput(
            endpoint_name=endpoint, model_query_string=query or None
        )
    )
    answers: list[str] = []
    output: Any = None
    try:
        for text in messages:
            await stream.input_stream.send(text_part(text))
            if output is None:  # the response stream, once the request is under way
                _, output = await stream.await_output()
            event = await output.receive()
            if event is None:  # the container ended the session
                break
            answers.append(bytes(event.value.bytes_).decode())
        # Ending the request stream ends the session; the response stream then ends too.
        await stream.input_stream.close()
        if output is not None:
            async for _ in output:
                pass
    finally:
        await stream.close()  # and the stream's span with it
    return answers


async def main(args: argparse.Namespace) -> int:
    provider = sm_tracing.configure("bidi-client")
    sm_tracing.instrument()  # every bidirectional-stream client, made before or after this

    async with contextlib.AsyncExitStack() as stack:
        if args.local:
            from sm_tracing.local import LocalBidiRuntime

            # The bidirectional API on loopback (HTTP/2 over TLS, with a certificate authority
            # of its own that runtime.transport() trusts), in front of the container.
            runtime = stack.enter_context(LocalBidiRuntime(args.local))
            config = await AsyncSageMakerRuntimeHTTP2Config.resolve(
                endpoint_uri=runtime.url,
                region="us-east-1",
                aws_access_key_id="local",  # any credentials: signed, not checked
                aws_secret_access_key="local",
                transport=runtime.transport(),
            )
        else:
            from smithy_http.aio.crt import AWSCRTHTTPClient

            # The CRT transport streams both ways at once over HTTP/2.
            config = await AsyncSageMakerRuntimeHTTP2Config.resolve(
                endpoint_uri=f"https://runtime.sagemaker.{args.region}.amazonaws.com:8443",
                region=args.region,
                transport=AWSCRTHTTPClient(),
            )
        client = AsyncSageMakerRuntimeHTTP2Client(config=config)
        stack.push_async_callback(client.close)

        tracer = trace.get_tracer(__name__)
        with tracer.start_as_current_span("client.py") as span:
            answers = await converse(client, args.endpoint, args.query, args.messages)
            trace_id = f"{span.get_span_context().trace_id:032x}"

    for answer in answers:
        print(answer)
    provider.force_flush()
    print(f"trace {trace_id}: {args.jaeger_url.rstrip('/')}/trace/{trace_id}")
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("messages", nargs="*", default=["hello", "bidirectional", "world"])
    parser.add_argument("--endpoint", help="the endpoint name (any name with --local)")
    parser.add_argument(
        "--local",
        metavar="WS_URL",
        help="a container's base URL, e.g. ws://127.0.0.1:8080: call it through a local runtime",
    )
    parser.add_argument("--query", default="", help="your ModelQueryString, e.g. 'model=demo'")
    parser.add_argument(
        "--region", default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    )
    parser.add_argument("--jaeger-url", default="http://localhost:16686")
    args = parser.parse_args(argv)
    if args.local:
        args.endpoint = args.endpoint or "local"
    elif not (args.endpoint and args.region):
        parser.error("give --endpoint and --region (or AWS_REGION), or --local")
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
