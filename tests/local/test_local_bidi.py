"""sm_tracing.local.LocalBidiRuntime, the bidirectional API on loopback, behaves as SageMaker does
where tracing can tell: what reaches the container (path and query string, no header), full
duplex, frames both ways, and the API's refusals. Driven by the real SDK on its CRT transport,
in front of a WebSocket container under real uvicorn, with no instrumentation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("aws_sdk_sagemaker_runtime_http2", reason="the SDK needs Python 3.12")
pytest.importorskip("h2")
pytest.importorskip("websockets")
pytest.importorskip("trustme")

from aws_sdk_sagemaker_runtime_http2.models import (
    InputValidationError,
    RequestPayloadPart,
    RequestStreamEventPayloadPart,
)
from opentelemetry.sdk.trace import TracerProvider

from sm_tracing.local import LocalBidiRuntime
from tests._bidi_support import (
    EchoContainer,
    Input,
    bidi_stack,
    part,
    payload,
    serve_container,
    with_client,
)


@pytest.fixture
def stack(tracer_provider: TracerProvider) -> Iterator[tuple[EchoContainer, LocalBidiRuntime]]:
    """The uvicorn container and the local runtime in front of it."""
    with bidi_stack(tracer_provider) as pair:
        yield pair


def test_only_the_path_and_the_query_string_reach_the_container(stack: Any) -> None:
    """The container is called on the invocation path with the query string, as given; none of
    the caller's headers (signature, variant, query string header) is forwarded."""
    container, runtime = stack

    async def scenario(client: Any) -> None:
        stream = await client.invoke_endpoint_with_bidirectional_stream(
            Input(
                endpoint_name="speech",
                target_variant="blue",
                model_invocation_path="stream/v2",
                model_query_string="model=nova-3&note=a%20b",
            )
        )
        await stream.input_stream.send(part("x"))
        output, events = await stream.await_output()
        assert output.invoked_production_variant == "blue"
        assert payload(await events.receive()) == b"X"
        await stream.close()

    with_client(runtime, scenario)
    (session,) = container.sessions
    assert (session.path, session.query) == ("/stream/v2", "model=nova-3&note=a%20b")
    forwarded = {name for name in session.headers if name.startswith(("x-amz", "authorization"))}
    assert forwarded == set()


def test_the_stream_is_full_duplex(tracer_provider: TracerProvider) -> None:
    """The container can speak first: its greeting arrives before the caller has sent
    anything, and the caller's parts flow while the response is open."""
    with bidi_stack(tracer_provider, greeting="ready") as (container, runtime):

        async def scenario(client: Any) -> list[bytes]:
            stream = await client.invoke_endpoint_with_bidirectional_stream(
                Input(endpoint_name="e")
            )
            _, events = await stream.await_output()
            first = payload(await asyncio.wait_for(events.receive(), 10))
            await stream.input_stream.send(part("then"))
            second = payload(await asyncio.wait_for(events.receive(), 10))
            await stream.close()
            return [first, second]

        assert with_client(runtime, scenario) == [b"ready", b"THEN"]
        assert container.sessions[0].received == ["then"]


def test_binary_parts_travel_as_binary_frames_of_any_size(stack: Any) -> None:
    """A part without DataType is a binary frame, its answer a binary part; a part larger than
    HTTP/2's initial flow-control window goes through whole."""
    container, runtime = stack
    big = bytes(range(256)) * 1024  # 256 KiB

    async def scenario(client: Any) -> tuple[bytes, str | None]:
        stream = await client.invoke_endpoint_with_bidirectional_stream(Input(endpoint_name="e"))
        event = RequestStreamEventPayloadPart(value=RequestPayloadPart(bytes_=big))
        await stream.input_stream.send(event)
        _, events = await stream.await_output()
        answer = await asyncio.wait_for(events.receive(), 30)
        await stream.close()
        return payload(answer), answer.value.data_type

    answer, data_type = with_client(runtime, scenario)
    assert answer == big[::-1]
    assert data_type == "BINARY"
    assert container.sessions[0].received == [big]


def test_ending_the_request_stream_closes_the_websocket(stack: Any) -> None:
    """Closing the caller's input ends the session: the container sees the WebSocket go, and
    the response stream then ends."""
    container, runtime = stack

    async def scenario(client: Any) -> list[bytes]:
        stream = await client.invoke_endpoint_with_bidirectional_stream(Input(endpoint_name="e"))
        await stream.input_stream.send(part("last"))
        _, events = await stream.await_output()
        first = payload(await events.receive())
        await stream.input_stream.close()
        rest = [payload(event) async for event in events]
        return [first, *rest]

    assert with_client(runtime, scenario) == [b"LAST"]
    assert container.sessions[0].received == ["last"]


@pytest.mark.parametrize(
    ("given", "stage"),
    [
        (Input(endpoint_name="e", model_query_string="a=1&&b=2"), "ModelQueryString"),
        (Input(endpoint_name="e", model_query_string="a=" + "1" * 2047), "ModelQueryString"),
        (Input(endpoint_name="e", model_invocation_path="/v1/listen"), "ModelInvocationPath"),
        (Input(endpoint_name="e", target_variant="-blue"), "TargetVariant"),
        (Input(endpoint_name="bad_name"), "EndpointName"),
    ],
)
def test_what_the_api_refuses_never_reaches_the_container(
    stack: Any, given: Any, stage: str
) -> None:
    """Members outside the API's patterns and limits are refused with InputValidationError,
    and no WebSocket is opened."""
    container, runtime = stack

    async def scenario(client: Any) -> str:
        stream = await client.invoke_endpoint_with_bidirectional_stream(given)
        with pytest.raises(InputValidationError) as raised:
            await stream.await_output()
        return raised.value.message

    assert stage in with_client(runtime, scenario)
    assert container.sessions == []


def test_the_runtime_stops_with_sessions_open(tracer_provider: TracerProvider) -> None:
    """Closing the runtime with a session open ends it, and frees the container's WebSocket."""
    container = EchoContainer(tracer_provider)
    with serve_container(container) as url:
        runtime = LocalBidiRuntime(url).start()

        async def scenario(client: Any) -> None:
            stream = await client.invoke_endpoint_with_bidirectional_stream(
                Input(endpoint_name="e")
            )
            await stream.input_stream.send(part("x"))
            _, events = await stream.await_output()
            assert payload(await events.receive()) == b"X"
            await asyncio.get_running_loop().run_in_executor(None, runtime.close)
            with pytest.raises(Exception):  # noqa: B017 - the transport's own error type
                while await asyncio.wait_for(events.receive(), 10) is not None:
                    pass
                raise EOFError

        with_client(runtime, scenario)
        with pytest.raises(RuntimeError, match="not running"):
            _ = runtime.url
