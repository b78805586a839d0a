"""Which meter providers sm_tracing measures into, and how often it asks."""

from __future__ import annotations

import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider

from sm_tracing import _telemetry


class _OtherProvider(metrics.MeterProvider):
    """A provider of another implementation than the SDK's."""

    def get_meter(self, name: str, *args: object, **kwargs: object) -> metrics.Meter:
        return metrics.NoOpMeter(name)


def test_only_the_api_packages_own_providers_record_nothing() -> None:
    """The API's stand-in (the global provider while none is installed) and its no-op provider
    record nothing; the SDK's and any other implementation's do."""
    stand_in = metrics.get_meter_provider()
    assert type(stand_in).__module__.startswith("opentelemetry.metrics")
    assert not _telemetry.records(stand_in)
    assert not _telemetry.records(metrics.NoOpMeterProvider())
    assert _telemetry.records(MeterProvider())
    assert _telemetry.records(_OtherProvider())


def test_a_package_named_like_the_api_is_not_taken_for_it() -> None:
    """Only the API package and its modules are the API's: a package whose name merely starts
    the same way is another implementation."""
    lookalike = type("Provider", (_OtherProvider,), {"__module__": "opentelemetry.metricsx"})
    assert _telemetry.records(lookalike())


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    clock = _Clock()
    monkeypatch.setattr(_telemetry.time, "monotonic", clock)
    return clock


def test_a_given_provider_is_always_recorded_into(
    clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a provider of its own, every call measures, whatever the global one is."""
    asked: list[object] = []
    monkeypatch.setattr(_telemetry.metrics, "get_meter_provider", lambda: asked.append(1))
    recording = _telemetry.Recording(metrics.NoOpMeterProvider())
    assert all(recording() for _ in range(3))
    assert asked == []


def test_the_global_provider_is_asked_about_at_most_once_a_second(
    clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a provider of its own: nothing is measured while the global provider is the
    API's stand-in; the global one is looked up again a second after the last look, and not
    at all once it records."""
    stand_in = metrics.get_meter_provider()
    current: list[metrics.MeterProvider] = [stand_in]
    asked: list[float] = []

    def get_meter_provider() -> metrics.MeterProvider:
        asked.append(clock.now)
        return current[0]

    monkeypatch.setattr(_telemetry.metrics, "get_meter_provider", get_meter_provider)
    recording = _telemetry.Recording(None)
    assert not recording()
    current[0] = MeterProvider()  # installed now: noticed at the next look
    clock.now += 0.5
    assert not recording()
    clock.now += 0.6
    assert recording()
    clock.now += 5.0
    assert recording()
    assert asked == [100.0, 101.1]
