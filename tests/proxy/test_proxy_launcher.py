"""The proxy as a container's ENTRYPOINT: it starts the model server given after ``--``,
answers ``/ping`` only once the server's health route does, passes SIGTERM and SIGINT on, and
exits with the server's exit status."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sm_tracing.container._proxy import INSTALL_HINT
from tests._serving import closed_port, stop
from tests.proxy._proxy_support import environment, request, start_proxy, wait_listening

pytestmark = pytest.mark.timeout(60)

# A model server that listens once the file argv[2] exists, answers /health, and on SIGTERM or
# SIGINT writes which signal it got into argv[3] and exits 7; with argv[4], exits with that
# status on its own once listening.
SERVER = """
import http.server, os, signal, sys, threading, time
port, go, got = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def on_signal(sig, frame):
    open(got, "w").write(signal.Signals(sig).name)
    os._exit(7)
signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
deadline = time.monotonic() + 20
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.02)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", port), Handler)
if len(sys.argv) > 4:
    os._exit(int(sys.argv[4]))
server.serve_forever()
"""


def _ping_until(url: str, status: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if request(url, "GET", "/ping", timeout=2)[0] == status:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"/ping never answered {status}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_ping_waits_for_the_server_and_signals_pass_on(tmp_path: Path, sig: int) -> None:
    """``/ping`` fails until the started server's health route answers, then succeeds; the
    signal the proxy gets goes to the server, whose exit status the proxy exits with."""
    port = closed_port()
    go, got = tmp_path / "go", tmp_path / "got"
    command = [sys.executable, "-c", SERVER, str(port), str(go), str(got)]
    container = start_proxy(f"http://127.0.0.1:{port}", tmp_path, command=command)
    try:
        wait_listening(container)
        assert request(container.url, "GET", "/ping")[0] == 502
        go.touch()
        _ping_until(container.url, 200)
        container.process.send_signal(sig)
        assert container.process.wait(20) == 7
        assert got.read_text() == signal.Signals(sig).name
    finally:
        stop(container)


def test_exits_with_the_status_of_a_server_that_stops(tmp_path: Path) -> None:
    """A server that exits on its own takes the proxy down with its exit status."""
    port = closed_port()
    (tmp_path / "go").touch()
    command = [sys.executable, "-c", SERVER, str(port), str(tmp_path / "go"), "unused", "5"]
    container = start_proxy(f"http://127.0.0.1:{port}", tmp_path, command=command)
    try:
        assert container.process.wait(30) == 5
    finally:
        stop(container)


def test_a_command_that_does_not_exist_is_127(tmp_path: Path) -> None:
    """A server command that can't be found: exit status 127, as a shell reports it."""
    container = start_proxy(
        f"http://127.0.0.1:{closed_port()}", tmp_path, command=["no-such-model-server-here"]
    )
    try:
        assert container.process.wait(30) == 127
        assert "cannot start" in container.output()
    finally:
        stop(container)


def test_without_its_extra_it_says_what_to_install() -> None:
    """Without httpx or uvicorn, the command exits 1 with the install hint."""
    code = (
        "import sys; sys.modules['httpx'] = None\n"
        "from sm_tracing.container._proxy import main\n"
        "sys.exit(main(['--upstream', 'http://127.0.0.1:1']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env=environment(),
        check=False,
    )
    assert done.returncode == 1
    assert INSTALL_HINT in done.stderr


def test_bad_arguments_are_refused() -> None:
    """An upstream that is no http URL, or a non-positive timeout, is a usage error (2)."""
    for argv in (["--upstream", "ftp://x"], ["--upstream", "http://x", "--timeout", "0"]):
        done = subprocess.run(
            [sys.executable, "-m", "sm_tracing.container._proxy", *argv],
            capture_output=True,
            text=True,
            timeout=30,
            env=environment(),
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert "usage: sm-tracing proxy" in done.stderr
