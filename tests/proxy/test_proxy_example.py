"""``examples/proxy`` run as its README says: the proxy starts the example server, and
``invoke.py`` gets one trace from its client through the proxy into the server's spans."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests._otlp_receiver import OTLPReceiver, ReceivedSpan
from tests._serving import ROOT, closed_port, shell_env, stop, wait_ready
from tests.proxy._proxy_support import start_proxy

pytestmark = pytest.mark.timeout(90)
EXAMPLE = ROOT / "examples" / "proxy"


def test_example_is_one_trace(receiver: OTLPReceiver, tmp_path: Path) -> None:
    """Client span, the proxy's span of each call, and the server's own spans under each, in
    one trace."""
    port = closed_port()
    command = [
        sys.executable, "-m", "uvicorn", "server:app", "--app-dir", str(EXAMPLE),
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    exporting = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    container = start_proxy(
        f"http://127.0.0.1:{port}",
        tmp_path,
        args=["--invocations-path", "/generate"],
        command=command,
        env=exporting,
    )
    try:
        wait_ready(container)
        done = subprocess.run(
            [sys.executable, "invoke.py", container.url],
            cwd=EXAMPLE,
            env=shell_env(receiver.url, OTEL_METRICS_EXPORTER="none"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        stop(container)
    assert done.returncode == 0, done.stderr
    assert "Traces cross the endpoint now." in done.stdout
    trace_id = json.loads(done.stdout.strip().splitlines()[-1])["trace_id"]

    def arrived(spans: list[ReceivedSpan]) -> bool:
        names = {(s.service, s.name) for s in spans if s.trace_id == trace_id}
        return {
            ("example-client", "ask the model"),
            ("model-server", "generate"),
            ("model-server", "generate_stream"),
        } <= names and sum(1 for s in spans if s.service == "sm-tracing-proxy") >= 2

    spans = [s for s in receiver.wait_for(arrived, timeout=20) if s.trace_id == trace_id]
    proxies = [s for s in spans if s.service == "sm-tracing-proxy"]
    assert [s.name for s in proxies] == ["POST /invocations"] * 2
    clients = {s.span_id for s in spans if s.kind == "client"}
    assert {s.parent_id for s in proxies} <= clients
    servers = [s for s in spans if s.service == "model-server" and s.kind == "server"]
    assert len(servers) == 2
    assert {s.parent_id for s in servers} == {s.span_id for s in proxies}
