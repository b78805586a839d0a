"""The ``proxy`` part of the benchmark: what ``sm-tracing proxy`` adds to a request and to a
streamed chunk, against the same HTTP stack forwarding without tracing (the floor).

Unlike the other parts, the unit of work crosses processes: a caller, the proxy, a model
server. The proxy runs in a process of its own (under callgrind for the instruction counts),
serving on loopback in front of a model server that lives in this process; the caller (also
here) sends one request at a time, so the proxy's instructions per request are what it adds
over calling the server directly (that call costs the proxy nothing). Two configurations:

- floor: uvicorn and an httpx ``AsyncClient`` forwarding each request and streaming the answer
  back (the proxy's forwarding app, ``sm_tracing.container._proxy.Forward``), no tracing;
- ours: the proxy's app as ``sm-tracing proxy`` serves it, that forwarding app under
  ``sm_tracing.ASGIMiddleware`` (span, propagator headers, echo), with a
  ``SimpleSpanProcessor`` and a counting exporter, as every other part.

Instructions: the proxy process turns callgrind's instrumentation on when first told to (over a
control route the caller calls), and calls ``os.getppid()`` (the marker) between stretches: N1
then N2 requests; then R streamed responses of K1 chunks and R of K2 chunks, the server sending
each chunk only once the caller has read the one before, so each chunk crosses the proxy on its
own. Per unit: ``(I(N2) - I(N1)) / (N2 - N1)``. The chunk stretches run S times over and the
median of the S estimates is taken: a chunk costs some 330,000 instructions of which ours is a
few hundred, and how the proxy's event loop meets each chunk (whole or in two reads, at once or
after a wait) varies from one stretch to the next by more than that. Targets: ours <= 1.25 x
the floor per request; ours adds <= 500 instructions per chunk over the floor.

Wall-clock, for information: the latency of one request through each proxy, less that of the
same request sent straight to the server, median and p99, in interleaved rounds.

``python benchmarks/_proxy_scenarios.py [--quick] [--no-valgrind]`` prints the table;
``run(quick=..., use_valgrind=...)`` returns it for ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: make the repository importable, whatever the working directory.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _base, _callgrind

CONFIGS = ("floor", "ours")
LABELS = {
    "floor": "floor: uvicorn + httpx forwarding",
    "ours": "ours: sm-tracing proxy",
}
REQUEST_LIMIT = 1.25  # ours / floor, per request
CHUNK_LIMIT = 500  # instructions ours adds per chunk over the floor
MARK_PATH = "/_benchmark/mark"
STARTUP_TIMEOUT = 300.0  # seconds: Python under valgrind imports slowly
REQUEST_TIMEOUT = 120.0


@dataclass(frozen=True)
class Counts:
    """How many units each stretch runs."""

    warmup: int
    requests: tuple[int, int]
    streams: int  # responses per chunk stretch
    chunks: tuple[int, int]  # chunks per response in each chunk stretch
    samples: int  # pairs of chunk stretches, the median of whose estimates is taken
    wall_requests: int
    wall_rounds: int


FULL = Counts(50, (100, 600), 10, (20, 120), 5, 3000, 5)
QUICK = Counts(20, (40, 200), 5, (10, 60), 3, 600, 3)


# -- the model server: in this process, answering as the caller lets it ------------------------


class ModelServer:
    """A model server on loopback: ``POST /invocations`` answers a small JSON body, or with an
    ``x-chunks: K`` header, K server-sent events, each sent once the caller has read the one
    before (``read_chunk``). It counts the requests that carried a ``traceparent``."""

    def __init__(self) -> None:
        self.traced = 0
        self.requests = 0
        self.gate = threading.Semaphore(0)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                self._answer(b'{"status":"ok"}')

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.requests += 1
                if self.headers.get("traceparent"):
                    owner.traced += 1
                chunks = int(self.headers.get("x-chunks") or 0)
                if not chunks:
                    self._answer(_base.RESPONSE_BODY)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for index in range(chunks):
                    if index and not owner.gate.acquire(timeout=REQUEST_TIMEOUT):
                        return
                    token = _base.TOKENS[index % len(_base.TOKENS)]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(token), token))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def _answer(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Caller:
    """One keep-alive connection to *url*, one request at a time."""

    def __init__(self, url: str, server: ModelServer) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self._connection = http.client.HTTPConnection(host, int(port), timeout=REQUEST_TIMEOUT)
        self._server = server

    def invoke(self) -> float:
        """One ``POST /invocations`` carrying a caller's context; its latency, in seconds."""
        start = time.perf_counter()
        self._connection.request(
            "POST",
            "/invocations",
            _base.REQUEST_BODY,
            {"X-Amzn-SageMaker-Custom-Attributes": _base.CARRIED_ATTRIBUTES},
        )
        response = self._connection.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200 or body != _base.RESPONSE_BODY:
            raise _base.ScenarioError(f"the answer was {response.status} {body[:80]!r}")
        return elapsed

    def stream(self, chunks: int) -> None:
        """One streamed response of *chunks* events, read one event at a time."""
        self._connection.request(
            "POST",
            "/invocations",
            _base.REQUEST_BODY,
            {
                "X-Amzn-SageMaker-Custom-Attributes": _base.CARRIED_ATTRIBUTES,
                "x-chunks": str(chunks),
            },
        )
        response = self._connection.getresponse()
        for index in range(chunks):
            token = _base.TOKENS[index % len(_base.TOKENS)]
            got = b""
            while len(got) < len(token):
                part = response.read1(len(token) - len(got))
                if not part:
                    raise _base.ScenarioError(f"the stream ended after {index} chunks")
                got += part
            if got != token:
                raise _base.ScenarioError(f"chunk {index} was {got[:40]!r}")
            if index + 1 < chunks:
                self._server.gate.release()
        if response.read() != b"":
            raise _base.ScenarioError("more than the chunks sent")

    def mark(self, on: bool = False) -> dict[str, Any]:
        """Tell the proxy to call the marker (after turning instrumentation on, with *on*)."""
        self._connection.request("GET", f"{MARK_PATH}?on={int(on)}")
        response = self._connection.getresponse()
        result: dict[str, Any] = json.loads(response.read())
        return result

    def close(self) -> None:
        self._connection.close()


# -- the proxy process --------------------------------------------------------------------------


def serve(config: str, upstream: str, port: int, vgdb: str | None) -> None:
    """The proxy of *config* on *port*, in front of *upstream*, until SIGTERM; with a control
    route that turns instrumentation on and calls the marker."""
    import uvicorn

    from sm_tracing.container._proxy import Forward, proxy_app

    tracer_provider, exporter = _base.provider()
    app: Any = (
        Forward(upstream)
        if config == "floor"
        else proxy_app(upstream, tracer_provider=tracer_provider)
    )

    async def benchmark(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != MARK_PATH:
            return await app(scope, receive, send)
        if scope["query_string"] == b"on=1" and vgdb is not None:
            from benchmarks.scenario import instrumentation_on

            instrumentation_on(vgdb)
        os.getppid()  # the marker
        body = json.dumps({"spans": exporter.servers}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    # As the proxy's command configures uvicorn.
    config_ = uvicorn.Config(
        benchmark,
        host="127.0.0.1",
        port=port,
        lifespan="on",
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
    )
    uvicorn.Server(config_).run()


@dataclass
class Proxy:
    """A proxy process, and the folder of its callgrind files."""

    process: subprocess.Popen[bytes]
    url: str
    out_dir: Path | None
    log: Path


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def proxy(config: str, upstream: str, work: Path, valgrind: str | None) -> Iterator[Proxy]:
    """The proxy of *config* in its own process (under callgrind with *valgrind*), once it
    answers; stopped on the way out."""
    port = _free_port()
    program = [
        sys.executable, str(Path(__file__).resolve()), "--serve", config,
        "--upstream", upstream, "--port", str(port),
    ]  # fmt: skip
    out_dir = None
    if valgrind is not None:
        vgdb = _callgrind.vgdb(valgrind)
        if vgdb is None:
            raise RuntimeError("vgdb is not on PATH")
        out_dir = Path(tempfile.mkdtemp(prefix=f"proxy-{config}-", dir=work))
        program = _callgrind.command(valgrind, out_dir, [*program, "--vgdb", vgdb])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SM_TRACING_"))}
    env["PYTHONHASHSEED"] = "0"
    log = work / f"proxy-{config}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(program, env=env, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {config} proxy did not start:\n{log.read_text()}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                connection.request("GET", "/ping")
                if connection.getresponse().status == 200:
                    connection.close()
                    break
            except OSError:
                time.sleep(0.2)
        yield Proxy(process, url, out_dir, log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- measuring ----------------------------------------------------------------------------------


@dataclass
class Result:
    """One configuration's figures."""

    per_request: float | None = None
    per_chunk: float | None = None
    added_median_us: float | None = None
    added_p99_us: float | None = None
    errors: list[str] = field(default_factory=list)


def _instructions(
    config: str, server: ModelServer, counts: Counts, work: Path, valgrind: str
) -> tuple[float, float]:
    """Instructions per request and per chunk of *config*'s proxy."""
    server.traced = server.requests = 0
    with proxy(config, server.url, work, valgrind) as running:
        caller = Caller(running.url, server)
        try:
            for _ in range(counts.warmup):
                caller.invoke()
            caller.stream(counts.chunks[0])
            caller.mark(on=True)
            n_1, n_2 = counts.requests
            for n in (n_1, n_2):
                for _ in range(n):
                    caller.invoke()
                caller.mark()
            for _ in range(counts.samples):
                for chunks in counts.chunks:
                    for _ in range(counts.streams):
                        caller.stream(chunks)
                    spans = caller.mark()["spans"]
        finally:
            caller.close()
        pid = running.process.pid
        out_dir = running.out_dir
    assert out_dir is not None
    _check(config, server, spans, counts)
    files = _callgrind.stretch_files(out_dir, pid)
    dumps = 3 + 2 * counts.samples
    if len(files) < dumps:
        raise _base.ScenarioError(f"{len(files)} callgrind dumps of the proxy instead of {dumps}")
    totals = [_callgrind.parse_totals(path.read_text(errors="replace")) for path in files[:dumps]]
    per_request = _callgrind.per_op(totals[1], n_1, totals[2], n_2)
    k_1, k_2 = (counts.streams * chunks for chunks in counts.chunks)
    estimates = [
        _callgrind.per_op(totals[at], k_1, totals[at + 1], k_2) for at in range(3, dumps, 2)
    ]
    return per_request, statistics.median(estimates)


def _check(config: str, server: ModelServer, spans: int, counts: Counts) -> None:
    """Each configuration did its work: every request reached the server, ours with a
    ``traceparent`` and one SERVER span, the floor with neither."""
    requests = counts.warmup + sum(counts.requests) + 1 + counts.streams * 2 * counts.samples
    if server.requests != requests:
        raise _base.ScenarioError(f"{server.requests} requests reached the server of {requests}")
    expected = requests if config == "ours" else 0
    if server.traced != expected or spans != expected:
        raise _base.ScenarioError(
            f"{config}: {server.traced} requests carried traceparent and {spans} SERVER spans "
            f"were made, of {expected}"
        )


def _latencies(caller: Caller, n: int) -> list[float]:
    return [caller.invoke() for _ in range(n)]


def _wall(server: ModelServer, counts: Counts, work: Path) -> dict[str, tuple[float, float]]:
    """Per configuration, the latency it adds over a direct call: median and p99, in us."""
    samples: dict[str, list[float]] = {"direct": [], **{config: [] for config in CONFIGS}}
    with (
        proxy("floor", server.url, work, None) as floor,
        proxy("ours", server.url, work, None) as ours,
    ):
        callers = {
            "direct": Caller(server.url, server),
            "floor": Caller(floor.url, server),
            "ours": Caller(ours.url, server),
        }
        try:
            for caller in callers.values():
                _latencies(caller, counts.warmup)
            per_round = counts.wall_requests // counts.wall_rounds
            for _ in range(counts.wall_rounds):
                for name, caller in callers.items():
                    samples[name].extend(_latencies(caller, per_round))
        finally:
            for caller in callers.values():
                caller.close()
    direct = samples["direct"]
    added = {}
    for config in CONFIGS:
        mine = samples[config]
        added[config] = (
            (statistics.median(mine) - statistics.median(direct)) * 1e6,
            (_p99(mine) - _p99(direct)) * 1e6,
        )
    return added


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def run(*, quick: bool = False, use_valgrind: bool = True) -> tuple[dict[str, Result], str]:
    """Measure both configurations; their results and the table, as text."""
    counts = QUICK if quick else FULL
    valgrind = _callgrind.valgrind() if use_valgrind else None
    results = {config: Result() for config in CONFIGS}
    server = ModelServer()
    work = Path(tempfile.mkdtemp(prefix="sm-tracing-proxy-bench-"))
    try:
        try:
            added = _wall(server, counts, work)
            for config, (median, p99) in added.items():
                results[config].added_median_us = median
                results[config].added_p99_us = p99
        except Exception as exc:  # one part failing leaves the others' figures
            for result in results.values():
                result.errors.append(f"wall-clock: {exc}")
        if valgrind is not None:
            for config in CONFIGS:
                try:
                    per_request, per_chunk = _instructions(config, server, counts, work, valgrind)
                except Exception as exc:
                    results[config].errors.append(f"instructions: {exc}")
                else:
                    results[config].per_request = per_request
                    results[config].per_chunk = per_chunk
    finally:
        server.close()
    return results, table(results, counts, valgrind is not None)


def table(results: dict[str, Result], counts: Counts, counted: bool) -> str:
    """The ``proxy`` rows and targets, in the other parts' layout."""
    n_1, n_2 = counts.requests
    lines = [
        "Proxy: sm-tracing proxy in front of a model server on loopback, one request at a time",
        f"  per request: callgrind N1={n_1:,} N2={n_2:,} after {counts.warmup} warm-up; per "
        f"chunk: {counts.streams} responses of {counts.chunks[0]} vs {counts.chunks[1]} chunks, "
        f"median of {counts.samples}; "
        f"wall-clock: {counts.wall_requests:,} requests each, direct and through each proxy, "
        f"in {counts.wall_rounds} rounds",
        f"  {'configuration':<40}{'instr/req':>12}{'instr/chunk':>13}"
        f"{'added us p50':>14}{'added us p99':>14}",
        "  " + "-" * 93,
    ]
    for config in CONFIGS:
        result = results[config]
        lines.append(
            f"  {LABELS[config]:<40}{_number(result.per_request):>12}"
            f"{_number(result.per_chunk):>13}{_number(result.added_median_us, 1):>14}"
            f"{_number(result.added_p99_us, 1):>14}"
        )
    floor, ours = results["floor"], results["ours"]
    lines.append(f"  {'target, in instructions':<40}{'value':>10}{'limit':>10}   verdict")
    if counted and floor.per_request and ours.per_request is not None:
        ratio = ours.per_request / floor.per_request
        spare = REQUEST_LIMIT * floor.per_request - ours.per_request
        lines.append(
            f"  {'ours / floor, per request (whole)':<40}{ratio:>10.2f}{'<= 1.25':>10}   "
            f"{_verdict(ratio <= REQUEST_LIMIT, spare)}"
        )
    else:
        lines.append(f"  {'ours / floor, per request (whole)':<40}{'n/a':>10}{'<= 1.25':>10}")
    if counted and floor.per_chunk is not None and ours.per_chunk is not None:
        extra = ours.per_chunk - floor.per_chunk
        lines.append(
            f"  {'ours - floor, per chunk':<40}{extra:>10,.0f}{'<= 500':>10}   "
            f"{_verdict(extra <= CHUNK_LIMIT, CHUNK_LIMIT - extra)}"
        )
    else:
        lines.append(f"  {'ours - floor, per chunk':<40}{'n/a':>10}{'<= 500':>10}")
    if floor.added_median_us and ours.added_median_us is not None:
        lines.append(
            f"  {'wall-clock ours / floor, added p50':<40}"
            f"{ours.added_median_us / floor.added_median_us:>10.2f}{'none':>10}   information"
        )
    for config in CONFIGS:
        lines.extend(f"  {config}: ERROR {error}" for error in results[config].errors)
    return "\n".join(lines)


def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _verdict(met: bool, spare: float) -> str:
    if met:
        return f"MET ({spare:,.0f} instr to spare)"
    return f"NOT MET (over by {-spare:,.0f} instr)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts")
    parser.add_argument("--no-valgrind", action="store_true", help="wall-clock only")
    parser.add_argument("--serve", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--vgdb", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.serve:
        serve(options.serve, options.upstream, options.port, options.vgdb)
        return 0
    results, text = run(quick=options.quick, use_valgrind=not options.no_valgrind)
    print(text)
    return 1 if any(result.errors for result in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
