"""The wire format's test vectors (docs/wire-format-vectors.json) against the codec.

Each vector is an input and the output the codec gives for it, written so that an
implementation in another language can run the same file and show it interoperates: merge
and read of CustomAttributes, the encoding of values, the container's echo both ways, the
whole trip through the default propagator, and the bidirectional stream's query string.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.jaeger import JaegerPropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sm_tracing import _codec, _propagation, _querystring, extract_context, strip_context

VECTORS_PATH = Path(__file__).resolve().parents[2] / "docs" / "wire-format-vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
# The propagator each key set in the file is the keys of.
PROPAGATORS: dict[str, TextMapPropagator] = {
    "w3c": CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()]),
    "jaeger": JaegerPropagator(),
}
KEYS = {
    name: _codec.Keys(spec["exact"], spec["prefixes"], spec["required"])
    for name, spec in VECTORS["keys"].items()
}


def cases(section: str) -> Any:
    """The vectors of *section*, each named for the test's id."""
    return pytest.mark.parametrize(
        "vector", VECTORS[section], ids=[v.get("name") or v["raw"] for v in VECTORS[section]]
    )


def encoding_cases(section: str) -> Any:
    return pytest.mark.parametrize("vector", VECTORS[section], ids=range(len(VECTORS[section])))


@pytest.fixture
def w3c_propagator(global_propagator: None) -> Iterator[None]:
    """OpenTelemetry's default propagator, W3C trace context and baggage, as the global one."""
    propagate.set_global_textmap(PROPAGATORS["w3c"])
    yield


def test_the_file_covers_every_part() -> None:
    """The vectors cover every operation of the format, the limits and skip reasons as the
    codec has them."""
    for section in (
        "merge",
        "read",
        "encode",
        "decode",
        "echo_format",
        "echo_read",
        "inject",
        "extract",
        "query_merge",
        "query_read",
        "query_encode",
    ):
        assert len(VECTORS[section]) >= 3, section
    assert VECTORS["limits"] == {
        "custom_attributes": _codec.MAX_LENGTH,
        "model_query_string": _querystring.MAX_LENGTH,
    }
    assert VECTORS["skip_reasons"] == {
        "invalid": _codec.SKIP_INVALID,
        "opaque": _codec.SKIP_OPAQUE,
        "budget": _codec.SKIP_BUDGET,
    }
    assert VECTORS["drop_order"] == list(_propagation.DROP_ORDER)


@pytest.mark.parametrize("name", sorted(PROPAGATORS))
def test_key_sets_are_the_propagators(name: str) -> None:
    """Each key set the vectors use is the one the library derives from that propagator."""
    keys = _propagation.our_keys(PROPAGATORS[name])
    assert VECTORS["keys"][name] == {
        "exact": sorted(keys.exact),
        "prefixes": list(keys.prefixes),
        "required": sorted(keys.required),
    }


def test_the_echo_key_set() -> None:
    """The response's keys are the echo's two."""
    assert VECTORS["keys"]["echo"] == {
        "exact": sorted(_codec.ECHO_KEYS.exact),
        "prefixes": [],
        "required": sorted(_codec.ECHO_KEYS.required),
    }


def _outcome(merged: str | None, reason: str | None, reasons: dict[str, str]) -> dict[str, str]:
    if merged is not None:
        return {"expected": merged}
    return {"skip": next(name for name, text in reasons.items() if text == reason)}


def _expected(vector: dict[str, Any]) -> dict[str, str]:
    return {key: vector[key] for key in ("expected", "skip") if key in vector}


@cases("merge")
def test_merge(vector: dict[str, Any]) -> None:
    """The caller's value and our encoded pairs give the wire value, or the skip reason."""
    pairs = [tuple(pair) for pair in vector["pairs"]]
    merged, reason = _codec.merge(
        vector["value"],
        pairs,
        KEYS[vector["keys"]],
        VECTORS["drop_order"],
        vector.get("opaque", False),
    )
    assert _outcome(merged, reason, VECTORS["skip_reasons"]) == _expected(vector)
    if merged is not None:
        assert _codec.is_valid(merged)


@cases("read")
def test_read(vector: dict[str, Any]) -> None:
    """A wire value gives our pairs (keys lower-cased, values decoded) and the caller's value."""
    pairs, rest = _codec.read(vector["value"], KEYS[vector["keys"]])
    assert (pairs, rest) == (vector["pairs"], vector["rest"])


@encoding_cases("encode")
def test_encode(vector: dict[str, str]) -> None:
    """A value of ours is percent-encoded where it would break a pair, and decodes back."""
    assert _codec.encode_value(vector["raw"]) == vector["encoded"]
    assert _codec.decode_value(vector["encoded"]) == vector["raw"]


@encoding_cases("decode")
def test_decode(vector: dict[str, str]) -> None:
    """Escapes decode as UTF-8; a malformed one is kept as it is."""
    assert _codec.decode_value(vector["encoded"]) == vector["raw"]


@cases("echo_format")
def test_echo_format(vector: dict[str, Any]) -> None:
    """The container's span and time, merged after what the app set, give the response value;
    None where no echo is sent (the app's value goes as it was)."""
    span_context = SpanContext(
        int(vector["trace_id"], 16),
        int(vector["span_id"], 16),
        True,
        TraceFlags(vector["flags"]),
    )
    echoed = _propagation.echo_value(vector["app_value"], span_context, vector["container_us"])
    assert echoed == vector["expected"]
    if vector["app_value"] is None and vector["container_us"] is not None and echoed:
        assert echoed == _codec.format_echo(
            span_context.trace_id,
            span_context.span_id,
            span_context.trace_flags,
            vector["container_us"],
        )


@cases("echo_read")
def test_echo_read(vector: dict[str, Any]) -> None:
    """A response value gives the container's span (None when malformed), its time as sent,
    and what the caller sees; no echo, None."""
    found = _codec.read_echo(vector["value"])
    if vector["echo"] is None:
        assert found is None
        return
    assert found is not None
    remote, micros, rest = found
    expected = vector["echo"]
    span = expected["traceresponse"]
    assert remote == (None if span is None else (span["trace_id"], span["span_id"], span["flags"]))
    assert (micros, rest) == (expected["container_us"], expected["rest"])


def _context(spec: dict[str, Any]) -> Context:
    state = TraceState([tuple(entry) for entry in spec.get("tracestate", [])])
    span_context = SpanContext(
        int(spec["trace_id"], 16), int(spec["span_id"], 16), False, TraceFlags(spec["flags"]), state
    )
    context = trace.set_span_in_context(NonRecordingSpan(span_context), Context())
    for key, value in spec.get("baggage", {}).items():
        context = baggage.set_baggage(key, value, context)
    return context


@cases("inject")
def test_inject(w3c_propagator: None, vector: dict[str, Any]) -> None:
    """A trace context (span, trace state, baggage) and the caller's value give the wire value
    under the default propagator."""
    merged, reason = _propagation.merge_context(vector["value"], _context(vector["context"]))
    assert _outcome(merged, reason, VECTORS["skip_reasons"]) == _expected(vector)


@cases("extract")
def test_extract(w3c_propagator: None, vector: dict[str, Any]) -> None:
    """A wire value gives the caller's value and the trace context, under the default
    propagator."""
    assert strip_context(vector["value"]) == vector["rest"]
    context = extract_context(vector["value"])
    span_context = trace.get_current_span(context).get_span_context()
    expected = vector["context"]
    if expected is None:
        assert not span_context.is_valid
        assert dict(baggage.get_all(context)) == {}
        return
    assert f"{span_context.trace_id:032x}" == expected["trace_id"]
    assert f"{span_context.span_id:016x}" == expected["span_id"]
    assert int(span_context.trace_flags) == expected["flags"]
    assert [list(item) for item in span_context.trace_state.items()] == expected.get(
        "tracestate", []
    )
    assert dict(baggage.get_all(context)) == expected.get("baggage", {})


@cases("query_merge")
def test_query_merge(vector: dict[str, Any]) -> None:
    """The caller's ModelQueryString and our encoded pairs give the query string sent, or the
    skip reason."""
    pairs = [tuple(pair) for pair in vector["pairs"]]
    merged, reason = _querystring.merge(
        vector["value"], pairs, KEYS[vector["keys"]].owns, VECTORS["drop_order"]
    )
    assert _outcome(merged, reason, VECTORS["query_skip_reasons"]) == _expected(vector)
    if merged is not None:
        assert _querystring.is_valid(merged)


@cases("query_read")
def test_query_read(vector: dict[str, Any]) -> None:
    """A WebSocket query string gives our pairs, decoded, and the caller's query string."""
    found = _querystring.read(vector["value"], KEYS[vector["keys"]].owns)
    assert (found.pairs, found.rest) == (vector["pairs"], vector["rest"])


@encoding_cases("query_encode")
def test_query_encode(vector: dict[str, str]) -> None:
    """A value in the query string keeps only unreserved characters, the rest percent-encoded."""
    assert _querystring.encode_value(vector["raw"]) == vector["encoded"]
    assert _codec.decode_value(vector["encoded"]) == vector["raw"]
