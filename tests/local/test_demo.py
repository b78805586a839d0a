"""``sm-tracing demo``: run for real, as its own process, and its verdict on joined traces."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _otlp_receiver import OTLPReceiver

from sm_tracing._demo import demo
from sm_tracing._demo.receiver import ReceivedSpan

SCRIPT = Path(sys.executable).with_name("sm-tracing")
MINE = demo.CUSTOM_ATTRIBUTES
BIDI = demo.bidi_ready()  # Python 3.12 with sm-tracing[demo,bidi]: the demo's fourth run


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``sm-tracing demo`` console script (or its entry point, when none or a
    stale one is installed), in a clean environment without OTEL_* variables."""
    # A console script left by an older install may name another entry point: not this code.
    current = SCRIPT.exists() and "sm_tracing._cli" in SCRIPT.read_text(errors="replace")
    command = [str(SCRIPT)] if current else [sys.executable, "-m", "sm_tracing._cli"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env["PYTHONIOENCODING"] = "utf-8"
    return subprocess.run(
        [*command, "demo", *args],
        check=False,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=60,
    )


@pytest.fixture(scope="module")
def green() -> tuple[subprocess.CompletedProcess[str], float]:
    """One plain run of the demo, and how many seconds it took."""
    started = time.monotonic()
    result = run_demo()
    return result, time.monotonic() - started


def test_demo_runs_green(green: tuple[subprocess.CompletedProcess[str], float]) -> None:
    """The demo exits 0 well within 30 seconds and prints three traces, each with the client
    span and, under it (or linked, for async), the container span."""
    result, seconds = green
    assert seconds < 30
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"OK: {4 if BIDI else 3} invocations" in out
    for title in ("plain: InvokeEndpoint", "streamed: InvokeEndpointWithResponseStream"):
        section = out.split(title, 1)[1].split("\n\n", 1)[0]
        assert len(re.findall(r"trace [0-9a-f]{32}", section)) == 1
        assert "SageMaker Runtime." in section
        assert "└─ POST /invocations" in section
        assert "demo-realtime-model" in section
    section = out.split("async: InvokeEndpointAsync", 1)[1].split("\n\n", 1)[0]
    client_trace, container_trace = re.findall(r"trace ([0-9a-f]{32})", section)[:2]
    assert client_trace != container_trace
    assert f"of trace {client_trace[:8]})" in section
    assert "demo-async-model" in section
    assert "/trace/" not in out  # no Jaeger links when nothing is exported


def test_demo_shows_custom_attributes_hop_by_hop(
    green: tuple[subprocess.CompletedProcess[str], float],
) -> None:
    """Per invocation the demo prints the value sent on the wire (the caller's value with the
    client span's traceparent), what the container app logged it received (the caller's value
    alone), and for the two synchronous calls the container's echo and what the caller got."""
    result, _ = green
    assert result.returncode == 0, result.stdout + result.stderr
    for title in ("plain: InvokeEndpoint", "streamed: InvokeEndpointWithResponseStream"):
        section = result.stdout.split(title, 1)[1].split("\n\n", 1)[0]
        client_span = re.search(r"trace ([0-9a-f]{32})", section)
        assert client_span is not None
        sent = re.search(
            r"sent on the wire +accept_eula=true;traceparent=00-([0-9a-f]{32})-", section
        )
        assert sent is not None and sent.group(1) == client_span.group(1)
        assert re.search(r"the app received +accept_eula=true\n", section)
        assert re.search(r"the container answered +accept_eula=true;traceresponse=00-", section)
        assert re.search(r"the caller got back +accept_eula=true\n", section)
    section = result.stdout.split("async: InvokeEndpointAsync", 1)[1].split("\n\n", 1)[0]
    client_trace = re.findall(r"trace ([0-9a-f]{32})", section)[0]
    assert f"traceparent=00-{client_trace}-" in section
    assert re.search(r"the app received +accept_eula=true\n", section)
    assert "the caller got back" not in section


def times(section: str) -> dict[str, float]:
    """The figures of a section's "Where the time went" lines, in milliseconds (chunks as a
    count), by label."""
    found = re.findall(r"^    ([a-zA-Z', ]+?) +([0-9]+(?:\.[0-9])?)(?: ms)?  \S", section, re.M)
    return {label: float(value) for label, value in found}


def test_demo_shows_where_the_time_went(
    green: tuple[subprocess.CompletedProcess[str], float],
) -> None:
    """Per invocation the demo prints the client span's own figures: its duration (the one in
    the tree), and for the two synchronous calls the container's time, within it, and
    SageMaker's share, never negative; for the stream also its time to first chunk (after the
    headers, within the call), its five chunks read to the end and their mean time apart (the
    app sleeps 20 ms before each). It says once what SageMaker's share means here."""
    result, _ = green
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert (
        " ".join(out.split()).count(
            "SageMaker's share is the client's time to the response's headers less the container's "
            "time: SageMaker's front door, the network and any queueing; here, the local runtime "
            "and loopback."
        )
        == 1
    )
    for title in ("plain: InvokeEndpoint", "streamed: InvokeEndpointWithResponseStream"):
        section = out.split(title, 1)[1].split("\n\n", 1)[0]
        figures = times(section)
        total = figures.pop("the call, in all", None) or figures.pop(
            "the call, to the stream's end"
        )
        tree = re.search(r"SageMaker Runtime\.\S+ +client +demo-client +([0-9.]+) ms", section)
        assert tree is not None and float(tree.group(1)) == total
        container, share = figures["the container"], figures["SageMaker's share"]
        assert 0 < container <= total
        assert 0 <= share <= total
        assert container + share <= total + 0.1  # each rounded to a tenth
        if title.startswith("streamed"):
            assert figures["chunks"] == 5
            assert "chunk_count (the stream's outcome: complete)" in section
            assert 20 <= figures["time to first chunk"] <= total
            assert figures["time to first chunk"] + 0.1 >= container + share
            # The app sleeps 20 ms before each chunk; under load the client may read the first
            # a few milliseconds late, which shortens the mean of the gaps after it.
            assert 15 <= figures["mean time per chunk"] < total
        else:
            assert set(figures) == {"the container", "SageMaker's share"}
            assert container >= 50  # the app's predict sleeps 50 ms
    section = out.split("async: InvokeEndpointAsync", 1)[1].split("\n\n", 1)[0]
    assert times(section)["the call, in all"] > 0
    assert "the container                             not on this span" in section
    assert "SageMaker's share" not in section


@pytest.mark.skipif(not BIDI, reason="needs Python 3.12 and sm-tracing[demo,bidi]")
def test_demo_bidirectional_run(green: tuple[subprocess.CompletedProcess[str], float]) -> None:
    """With the HTTP/2 SDK the demo opens a bidirectional stream: the WebSocket container's
    session span is a child of the client span, with an answer span per message, and the
    client span's figures are shown: its duration, its first chunk within it, four parts each
    way and a stream that completed."""
    result, _ = green
    assert result.returncode == 0, result.stdout + result.stderr
    section = result.stdout.split("bidirectional: InvokeEndpointWithBidirectionalStream", 1)[1]
    section = section.split("\n\n", 1)[0]
    assert len(re.findall(r"trace [0-9a-f]{32}", section)) == 1
    assert "SageMaker Runtime HTTP2.InvokeEndpointWithBidirectionalStream  client" in section
    assert "└─ WS /invocations-bidirectional-stream" in section
    assert section.count("─ answer ") == len(demo.BIDI_MESSAGES)
    figures = times(section)
    total = figures.pop("the session, to its end")
    tree = re.search(r"InvokeEndpointWithBidirectionalStream +client +demo-client +([0-9.]+) ms",
                     section)  # fmt: skip
    assert tree is not None and float(tree.group(1)) == total
    assert 20 <= figures["time to first chunk"] <= total  # the app answers after 20 ms
    assert figures["parts sent"] == figures["parts received"] == len(demo.BIDI_MESSAGES)
    assert "chunk_count (the stream's outcome: complete)" in section
    assert "Skipped:" not in result.stdout


@pytest.mark.skipif(BIDI, reason="the bidirectional run is made here")
def test_demo_says_what_the_bidirectional_run_needs(
    green: tuple[subprocess.CompletedProcess[str], float],
) -> None:
    """Without Python 3.12 and the HTTP/2 SDK the demo says, in one line, what the
    bidirectional run needs, and still passes."""
    result, _ = green
    assert result.returncode == 0, result.stdout + result.stderr
    needs = [line for line in result.stdout.splitlines() if "bidirectional" in line]
    assert needs == [
        "Skipped: the bidirectional run (InvokeEndpointWithBidirectionalStream) needs Python 3.12"
        " or later and pip install 'sm-tracing[demo,bidi]'"
        " (from a clone: pip install -e '.[demo,bidi]')."
    ]


def test_demo_says_what_it_waits_for(
    green: tuple[subprocess.CompletedProcess[str], float],
) -> None:
    """Before the first trace the demo says it is starting the containers, when each answers,
    and that it is calling the runtime, in that order."""
    result, _ = green
    before = result.stdout.split("plain: InvokeEndpoint", 1)[0]
    lines = [line.strip() for line in before.splitlines() if line.strip()]
    names = ["async", "bidi", "realtime"] if BIDI else ["async", "realtime"]
    assert lines[0].startswith(f"Starting {'three' if BIDI else 'two'} model containers")
    assert ("sm_tracing.ASGIMiddleware, under uvicorn" in lines[0]) == BIDI
    ready = sorted(re.sub(r"[0-9.]+ s$", "N s", line) for line in lines[1 : 1 + len(names)])
    assert ready == [f"{name} container ready after N s" for name in names]
    assert lines[1 + len(names)].startswith("Calling a local SageMaker runtime (http://127.0.0.1:")


def test_demo_exports_and_links_to_jaeger() -> None:
    """With --otlp-endpoint every span (client and containers) also reaches that endpoint, and
    each trace gets its link under --jaeger-url."""
    with OTLPReceiver() as collector:
        result = run_demo("--otlp-endpoint", collector.url, "--jaeger-url", "http://jaeger:1/")
        assert result.returncode == 0, result.stdout + result.stderr
        spans = collector.spans
    links = set(re.findall(r"http://jaeger:1/trace/([0-9a-f]{32})", result.stdout))
    # plain, streamed, async's two linked traces, and the bidirectional stream's
    assert len(links) == (5 if BIDI else 4)
    assert links <= {span.trace_id for span in spans}
    services = {span.service for span in spans}
    assert {"demo-client", "demo-realtime-model", "demo-async-model"} <= services
    assert ("demo-bidi-model" in services) == BIDI


def test_demo_fails_when_export_fails() -> None:
    """An --otlp-endpoint nobody listens on makes the demo fail with a clear message."""
    with OTLPReceiver() as closed:
        dead = closed.url
    result = run_demo("--otlp-endpoint", dead)
    assert result.returncode == 1
    assert f"could not export to {dead}/v1/traces" in result.stdout


def span(name: str, span_id: str, parent: str | None, service: str, **kw: object) -> ReceivedSpan:
    """A received span, ids made of one repeated character."""
    fields: dict[str, object] = {
        "trace_id": "1" * 32,
        "span_id": span_id * 16,
        "parent_id": None if parent is None else parent * 16,
        "name": name,
        "kind": "internal",
        "start_ns": 0,
        "end_ns": 1_000_000,
        "service": service,
        "scope": "s",
    }
    fields.update(kw)
    return ReceivedSpan(**fields)  # type: ignore[arg-type]


TIMED = {"aws.sagemaker.container.duration": 0.0005, "aws.sagemaker.overhead.duration": 0.0002}
STREAMED = {
    **TIMED,
    "aws.sagemaker.stream.time_to_first_chunk": 0.0007,
    "aws.sagemaker.stream.chunk_count": 2,
    "aws.sagemaker.stream.time_per_chunk": 0.0001,
    "aws.sagemaker.stream.outcome": "complete",
}


def clients() -> list[ReceivedSpan]:
    """The three client spans of a demo run, in three traces."""
    return [
        span("SageMaker Runtime.InvokeEndpoint", "a", None, "demo-client", attributes=TIMED),
        span("SageMaker Runtime.InvokeEndpointWithResponseStream", "b", None, "demo-client",
             trace_id="2" * 32, attributes=STREAMED),
        span("SageMaker Runtime.InvokeEndpointAsync", "c", None, "demo-client",
             trace_id="3" * 32),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("containers", "problems"),
    [
        (
            [
                span("POST /invocations", "d", "a", "m"),
                span("POST /invocations", "e", "b", "m", trace_id="2" * 32),
                span("POST /invocations", "f", None, "m", trace_id="4" * 32,
                     links=(("3" * 32, "c" * 16),)),
            ],
            [],
        ),
        (
            [
                span("POST /invocations", "d", None, "m", trace_id="5" * 32),
                span("POST /invocations", "e", "b", "m", trace_id="2" * 32),
            ],
            ["plain: no container span is a child of the client span",
             "async: no container span is linked to the client span"],
        ),
    ],
)  # fmt: skip
def test_verdict(containers: list[ReceivedSpan], problems: list[str]) -> None:
    """The demo passes only when each container span is the client span's child (or, for
    async, linked to it), and names each scenario that did not join."""
    out = io.StringIO()
    assert demo._report([*clients(), *containers], out, None) == problems


def test_verdict_missing_client_span() -> None:
    """A client span that never arrived is reported, not skipped."""
    out = io.StringIO()
    problems = demo._report(clients()[1:], out, None)
    assert problems[0] == "plain: expected one client span, got 0"


@pytest.mark.parametrize(
    ("index", "attributes", "problems"),
    [
        (0, TIMED, []),
        (0, {}, ["plain: the client span has no aws.sagemaker.container.duration",
                 "plain: the client span has no aws.sagemaker.overhead.duration"]),
        (1, {**STREAMED, "aws.sagemaker.stream.time_per_chunk": None},
         ["streamed: the client span has no aws.sagemaker.stream.time_per_chunk"]),
        (2, {}, []),
    ],
)  # fmt: skip
def test_times_verdict(index: int, attributes: dict[str, object], problems: list[str]) -> None:
    """A synchronous call whose client span lacks the container's time or SageMaker's share
    (or, for the stream, a figure of its chunks) fails the demo, the figure shown as (none);
    the async call has none to show."""
    out = io.StringIO()
    client = span("c", "a", None, "demo-client", attributes=attributes)
    assert demo._show_times(demo.SCENARIOS[index], client, out) == problems
    assert ("(none)" in out.getvalue()) == bool(problems)
    assert "the call, " in out.getvalue()


@pytest.mark.parametrize(
    ("attributes", "events", "problems"),
    [
        ({"aws.sagemaker.stream.request_chunk_count": 2, "aws.sagemaker.stream.chunk_count": 3},
         (("first_chunk", 400_000),), []),
        ({"aws.sagemaker.stream.chunk_count": 3}, (("other", 1),),
         ["bidirectional: the client span has no aws.sagemaker.stream.request_chunk_count",
          "bidirectional: the client span has no first_chunk event"]),
    ],
)  # fmt: skip
def test_session_times(
    attributes: dict[str, object], events: tuple[tuple[str, int], ...], problems: list[str]
) -> None:
    """The bidirectional stream shows its duration, its first_chunk event's time from the
    span's start, and its parts each way; one missing fails the demo."""
    out = io.StringIO()
    client = span("c", "a", None, "demo-client", start_ns=100_000, event_times=events,
                  attributes={**attributes, "aws.sagemaker.stream.outcome": "closed"})  # fmt: skip
    assert demo._show_times(demo.BIDIRECTIONAL, client, out) == problems
    lines = [" ".join(line.split()) for line in out.getvalue().splitlines()]
    assert lines[1] == "the session, to its end 0.9 ms the client span's duration"
    first = "0.3 ms" if not problems else "(none)"
    assert lines[3] == f"time to first chunk {first} its first_chunk event"
    assert lines[5].startswith("parts received 3 aws.sagemaker.stream.chunk_count")


def test_times_show_the_span_figures() -> None:
    """The figures shown are the span's duration and attributes, in milliseconds, each beside
    the attribute it comes from."""
    out = io.StringIO()
    client = span("c", "b", None, "demo-client", end_ns=2_000_000, attributes=STREAMED)
    assert demo._show_times(demo.SCENARIOS[1], client, out) == []
    lines = [" ".join(line.split()) for line in out.getvalue().splitlines()]
    assert lines[1:] == [
        "the call, to the stream's end 2.0 ms the client span's duration",
        "the container 0.5 ms aws.sagemaker.container.duration, to its first byte",
        "SageMaker's share 0.2 ms aws.sagemaker.overhead.duration",
        "time to first chunk 0.7 ms aws.sagemaker.stream.time_to_first_chunk",
        "chunks 2 aws.sagemaker.stream.chunk_count (the stream's outcome: complete)",
        "mean time per chunk 0.1 ms aws.sagemaker.stream.time_per_chunk",
    ]


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("http://localhost:4318", "http://localhost:4318/v1/traces"),
        ("http://localhost:4318/", "http://localhost:4318/v1/traces"),
        ("http://collector/otlp/v1/traces", "http://collector/otlp/v1/traces"),
    ],
)
def test_traces_url(endpoint: str, expected: str) -> None:
    """A base endpoint gets /v1/traces; a URL with a path is used as it is."""
    assert demo.traces_url(endpoint) == expected


@pytest.mark.parametrize(
    ("carried", "problems"),
    [
        (
            demo.Carried(sent=f"{MINE};traceparent=00-1-2-03", received=MINE),
            [],
        ),
        (
            demo.Carried(sent=MINE, received=MINE),
            ["plain: no trace context was sent in CustomAttributes"],
        ),
        (
            demo.Carried(sent="traceparent=00-1-2-03", received=None),
            ["plain: the app received None, not the caller's 'accept_eula=true'"],
        ),
        (
            demo.Carried(sent="a=b;traceparent=00-1-2-03", received="a=b;traceparent=00-1-2-03"),
            ["plain: the app received 'a=b;traceparent=00-1-2-03', "
             "not the caller's 'accept_eula=true'"],
        ),
    ],
)  # fmt: skip
def test_hops_verdict(carried: demo.Carried, problems: list[str]) -> None:
    """The demo fails when no trace context went on the wire or the app did not receive the
    caller's own value exactly, and prints every hop it knows of."""
    out = io.StringIO()
    assert demo._show_hops(demo.SCENARIOS[0], carried, out) == problems
    assert "the caller passed       accept_eula=true" in out.getvalue()
    assert "the caller got back     (none)" in out.getvalue()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_clock_only_on_a_terminal() -> None:
    """Steps are lines everywhere; the running clock is written only to a terminal, each
    reading once, and a step rubs it out before printing."""
    plain, terminal = io.StringIO(), _Terminal()
    for out in (plain, terminal):
        progress = demo._Progress(out)
        progress.waiting("  waiting:", 0.01)
        progress.waiting("  waiting:", 0.02)
        progress.waiting("  waiting:", 0.31)
        progress.say("ready")
    assert plain.getvalue() == "ready\n"
    assert terminal.getvalue() == (
        "\r\033[K  waiting: 0.0 s\r\033[K  waiting: 0.3 s\r\033[Kready\n"
    )


def test_container_that_dies_is_reported(tmp_path: Path) -> None:
    """A container process that exits before answering /ping stops the demo with its log."""
    log = tmp_path / "container.log"
    log.write_text("ModuleNotFoundError: No module named 'flask'\n")
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait(30)
    container = demo._Container(process, "http://127.0.0.1:1", log, "realtime")
    with pytest.raises(demo.DemoError, match="the realtime container exited") as caught:
        container.wait_ready(time.monotonic() + 10)
    assert "No module named 'flask'" in str(caught.value)
