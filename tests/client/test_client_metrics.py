"""The client's metrics, read through the SDK's in-memory metric reader, and the GenAI
attributes of the endpoints ``genai_models`` names."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _client_support import Wire, call_params, canned_for, model_error, run_python
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import sm_tracing
from tests.conftest import BOTOCORE_PREFIX_AWARE_ID, requires_botocore

STREAM = "invoke_endpoint_with_response_stream"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ECHO = f"traceresponse=00-{TRACE}-00f067aa0ba902b7-01;sm-container-us=1500"
# Every attribute a client metric may carry: none of them per request.
BOUNDED = {
    "rpc.method",
    "aws.sagemaker.endpoint.name",
    "aws.sagemaker.invoked_production_variant",
    "error.type",
    "gen_ai.provider.name",
    "gen_ai.operation.name",
    "gen_ai.request.model",
}


@dataclass
class Point:
    name: str
    attributes: dict[str, Any]
    count: int
    sum: float
    bounds: tuple[float, ...]


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    """A metric reader of this test's own, behind a MeterProvider of its own."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    reader.meter_provider = provider  # type: ignore[attr-defined]
    yield reader
    provider.shutdown()


def points(reader: InMemoryMetricReader) -> list[Point]:
    """Every histogram point the reader holds."""
    found = []
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    assert isinstance(point, HistogramDataPoint)
                    attributes = dict(point.attributes or {})
                    bounds = tuple(point.explicit_bounds)
                    found.append(Point(metric.name, attributes, point.count, point.sum, bounds))
    return found


def named(reader: InMemoryMetricReader, name: str) -> list[Point]:
    return [point for point in points(reader) if point.name == name]


@pytest.fixture
def metering(
    tracer_provider: TracerProvider, reader: InMemoryMetricReader
) -> Iterator[Callable[..., None]]:
    """Calls instrument() with this test's providers and the options given; uninstruments
    afterwards."""

    def instrument(**options: Any) -> None:
        sm_tracing.instrument(
            tracer_provider=tracer_provider,
            meter_provider=reader.meter_provider,  # type: ignore[attr-defined]
            **options,
        )

    yield instrument
    sm_tracing.uninstrument()


@pytest.fixture
def metered(metering: Callable[..., None]) -> None:
    """instrument() with this test's providers."""
    metering()


@pytest.mark.usefixtures("metered")
def test_each_call_is_measured_by_endpoint_variant_and_operation(
    client: Any, reader: InMemoryMetricReader
) -> None:
    """Three InvokeEndpoint calls make one point of three measurements, with the endpoint, the
    variant and the operation, and the GenAI duration buckets."""
    for _ in range(3):
        client.invoke_endpoint(**call_params("invoke_endpoint", InferenceId="per-request-id"))
    (point,) = named(reader, "aws.sagemaker.client.operation.duration")
    assert point.count == 3
    assert point.attributes == {
        "rpc.method": "InvokeEndpoint",
        "aws.sagemaker.endpoint.name": "my-endpoint",
        "aws.sagemaker.invoked_production_variant": "variant-a",
    }
    assert point.bounds[0] == 0.01 and point.bounds[-1] == 81.92
    assert 0 < point.sum < 30


@pytest.mark.usefixtures("metered")
def test_a_failed_call_is_measured_with_its_error_type(
    client: Any, wire: Wire, reader: InMemoryMetricReader
) -> None:
    """A ModelError is measured apart, by its error type."""
    wire.respond = lambda request: model_error()
    with pytest.raises(client.exceptions.ModelError):
        client.invoke_endpoint(**call_params("invoke_endpoint"))
    (point,) = named(reader, "aws.sagemaker.client.operation.duration")
    assert point.attributes["error.type"] == "botocore.errorfactory.ModelError"
    assert point.count == 1


@pytest.mark.usefixtures("metered")
def test_a_stream_is_measured_when_it_ends(client: Any, reader: InMemoryMetricReader) -> None:
    """A stream read to its end gives its duration, its time to first chunk and its mean time
    per chunk after the first, once each; nothing is measured before it ends."""
    body = client.invoke_endpoint_with_response_stream(**call_params(STREAM))["Body"]
    next(iter(body))
    assert named(reader, "aws.sagemaker.client.operation.duration") == []
    first = named(reader, "aws.sagemaker.client.operation.time_to_first_chunk")
    assert first == []
    list(body)
    for name in ("duration", "time_to_first_chunk", "time_per_output_chunk"):
        (point,) = named(reader, f"aws.sagemaker.client.operation.{name}")
        assert point.count == 1
        assert point.attributes["rpc.method"] == "InvokeEndpointWithResponseStream"


@pytest.mark.usefixtures("metered")
def test_a_stream_closed_early_has_no_time_per_chunk(
    client: Any, reader: InMemoryMetricReader
) -> None:
    """Closed after its first chunk, a stream is measured without a mean time per chunk: the
    time until close() is the caller's, not the model's."""
    body = client.invoke_endpoint_with_response_stream(**call_params(STREAM))["Body"]
    for _ in body:
        break
    body.close()
    assert len(named(reader, "aws.sagemaker.client.operation.duration")) == 1
    assert len(named(reader, "aws.sagemaker.client.operation.time_to_first_chunk")) == 1
    assert named(reader, "aws.sagemaker.client.operation.time_per_output_chunk") == []


@pytest.mark.usefixtures("metered")
def test_sagemakers_share_is_measured_from_the_echo(
    client: Any, wire: Wire, reader: InMemoryMetricReader
) -> None:
    """With the container's time in the echo, SageMaker's share of the call is measured."""
    wire.respond = lambda request: canned_for("InvokeEndpoint", ECHO)
    client.invoke_endpoint(**call_params("invoke_endpoint"))
    (point,) = named(reader, "aws.sagemaker.overhead.duration")
    assert point.count == 1
    assert point.sum >= 0
    assert point.attributes["aws.sagemaker.endpoint.name"] == "my-endpoint"


@pytest.mark.parametrize("method", ["invoke_endpoint", STREAM])
def test_a_genai_endpoint_gets_the_genai_names_and_attributes(
    metering: Callable[..., None],
    client: Any,
    reader: InMemoryMetricReader,
    exporter: InMemorySpanExporter,
    method: str,
) -> None:
    """An endpoint genai_models names is measured under the GenAI client metrics' names, and
    its span and metrics carry the provider, the operation and the model."""
    metering(genai_models={"my-endpoint": "meta-llama/Llama-3.1-8B-Instruct"})
    response = getattr(client, method)(**call_params(method))
    if method == STREAM:
        list(response["Body"])
    genai = {
        "gen_ai.provider.name": "aws.sagemaker",
        "gen_ai.operation.name": "text_completion",
        "gen_ai.request.model": "meta-llama/Llama-3.1-8B-Instruct",
    }
    (span,) = exporter.get_finished_spans()
    assert genai.items() <= dict(span.attributes or {}).items()
    (point,) = named(reader, "gen_ai.client.operation.duration")
    assert genai.items() <= point.attributes.items()
    assert named(reader, "aws.sagemaker.client.operation.duration") == []
    if method == STREAM:
        (first,) = named(reader, "gen_ai.client.operation.time_to_first_chunk")
        assert first.bounds[0] == 0.001
        assert named(reader, "gen_ai.client.operation.time_per_output_chunk")


def _ask(name: str, params: Any) -> str | None:
    if name == "broken":
        raise RuntimeError("no model")
    return "mistral-7b" if name == "llm" else None


@pytest.mark.parametrize(
    ("endpoint", "model"), [("llm", "mistral-7b"), ("xgboost", None), ("broken", None)]
)
def test_genai_models_as_a_callable(
    metering: Callable[..., None],
    client: Any,
    reader: InMemoryMetricReader,
    exporter: InMemorySpanExporter,
    endpoint: str,
    model: str | None,
) -> None:
    """A callable names the model per call; None, or a callable that raises, means a call
    like any other (never the endpoint name as the model), and the call goes through."""
    metering(genai_models=_ask)
    client.invoke_endpoint(**call_params("invoke_endpoint", EndpointName=endpoint))
    (span,) = exporter.get_finished_spans()
    assert (span.attributes or {}).get("gen_ai.request.model") == model
    name = "gen_ai" if model else "aws.sagemaker"
    (point,) = named(reader, f"{name}.client.operation.duration")
    assert point.attributes.get("gen_ai.request.model") == model


@pytest.mark.usefixtures("metered")
@requires_botocore(BOTOCORE_PREFIX_AWARE_ID, "sends PrefixAwareId")
def test_metric_attributes_stay_bounded(
    client: Any, wire: Wire, reader: InMemoryMetricReader
) -> None:
    """Whatever the call carries (inference, session and prefix ids, a target model), metrics
    are split only by endpoint, variant, operation, error type and GenAI model."""
    wire.respond = lambda request: canned_for("InvokeEndpoint", ECHO)
    for index in range(3):
        client.invoke_endpoint(
            **call_params(
                "invoke_endpoint",
                InferenceId=f"inference-{index}",
                SessionId=f"session-{index}",
                PrefixAwareId=f"prefix-{index}",
                TargetModel=f"model-{index}.tar.gz",
            )
        )
    found = points(reader)
    assert found
    for point in found:
        assert set(point.attributes) <= BOUNDED, point
        assert point.count == 3


@pytest.mark.parametrize("models", [42, "my-endpoint", ["my-endpoint"]])
def test_genai_models_of_another_kind_is_a_type_error(models: Any) -> None:
    """genai_models must be a mapping or a callable: anything else is refused at once."""
    from sm_tracing import SageMakerInstrumentor

    with pytest.raises(TypeError, match="genai_models"):
        sm_tracing.instrument(genai_models=models)
    assert not SageMakerInstrumentor().is_instrumented_by_opentelemetry


def test_metrics_reach_a_meter_provider_installed_after_instrument() -> None:
    """With no meter_provider given, the client measures nothing until an SDK MeterProvider is
    installed globally (not even into the API's stand-in, which would drop it), and the calls
    from a second after that on."""
    code = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
        "import sm_tracing\n"
        "from sm_tracing.client._metrics import Meters\n"
        "measured = []\n"
        "measure = Meters.measure\n"
        "def counting(self, *args):\n"
        "    measured.append(1)\n"
        "    return measure(self, *args)\n"
        "Meters.measure = counting\n"
        "from opentelemetry import metrics\n"
        "from opentelemetry.sdk.metrics import MeterProvider\n"
        "from opentelemetry.sdk.metrics.export import InMemoryMetricReader\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from _client_support import Wire, call_params, make_client\n"
        "sm_tracing.instrument(tracer_provider=TracerProvider())\n"
        "client = make_client(wire=Wire())\n"
        "client.invoke_endpoint(**call_params('invoke_endpoint'))\n"
        "print('measured', len(measured))\n"
        "reader = InMemoryMetricReader()\n"
        "metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))\n"
        "time.sleep(1.05)\n"
        "client.invoke_endpoint(**call_params('invoke_endpoint'))\n"
        "data = reader.get_metrics_data()\n"
        "for rm in data.resource_metrics:\n"
        "    for sm in rm.scope_metrics:\n"
        "        for m in sm.metrics:\n"
        "            print(m.name, sum(p.count for p in m.data.data_points))\n"
    )
    done = run_python(code)
    assert done.stdout.split() == [
        "measured",
        "0",
        "aws.sagemaker.client.operation.duration",
        "1",
    ]


def test_metrics_reach_a_global_meter_provider_that_is_not_the_sdks() -> None:
    """A MeterProvider of another implementation than the SDK's, installed globally, gets the
    client's measurements too: only the API's own stand-in is skipped."""
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
        "import sm_tracing\n"
        "from opentelemetry import metrics\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from _client_support import Wire, call_params, make_client\n"
        "recorded = []\n"
        "class Histogram(metrics.NoOpHistogram):\n"
        "    def __init__(self, name):\n"
        "        super().__init__(name)\n"
        "        self.called = name\n"
        "    def record(self, amount, attributes=None, context=None):\n"
        "        recorded.append((self.called, dict(attributes or {})))\n"
        "class Meter(metrics.NoOpMeter):\n"
        "    def create_histogram(self, name, *args, **kwargs):\n"
        "        return Histogram(name)\n"
        "class Provider(metrics.MeterProvider):\n"
        "    def get_meter(self, name, *args, **kwargs):\n"
        "        return Meter(name)\n"
        "metrics.set_meter_provider(Provider())\n"
        "sm_tracing.instrument(tracer_provider=TracerProvider())\n"
        "client = make_client(wire=Wire())\n"
        "client.invoke_endpoint(**call_params('invoke_endpoint'))\n"
        "for name, attributes in recorded:\n"
        "    print(name, attributes['rpc.method'])\n"
    )
    done = run_python(code)
    assert done.stdout.split() == ["aws.sagemaker.client.operation.duration", "InvokeEndpoint"]
