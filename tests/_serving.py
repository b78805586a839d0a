"""Model containers in processes of their own: an app under real gunicorn or uvicorn, serving on a
loopback socket bound here and handed to the process, waited for and stopped; and the client
side of the tests that call them."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

ROOT = Path(__file__).resolve().parent.parent
STACKS = ("gunicorn", "uvicorn")

# uvicorn's --fd expects a Unix socket; this serves the app on the inherited TCP socket instead.
# The app is named as gunicorn names it: ``module:name``, or ``module:factory()`` to call.
_UVICORN = (
    "import socket, sys, uvicorn\n"
    "fd, app = int(sys.argv[1]), sys.argv[2]\n"
    "factory = app.endswith('()')\n"
    "config = uvicorn.Config(app.removesuffix('()'), factory=factory, log_level='warning')\n"
    "uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])\n"
)


@functools.cache
def _no_control_socket() -> tuple[str, ...]:
    # Recent gunicorn opens a control socket at one fixed path per user: several servers at
    # once (tests run in parallel) would fight over it. Older releases have no such option.
    from gunicorn.config import KNOWN_SETTINGS

    known = {flag for setting in KNOWN_SETTINGS for flag in setting.cli or ()}
    return ("--no-control-socket",) if "--no-control-socket" in known else ()


@dataclass
class Container:
    """A container process serving on a loopback socket handed to it."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        """What the process wrote so far."""
        return self.log.read_text(errors="replace")


def launch(
    stack: str,
    app: str,
    name: str,
    logs: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
    workers: int = 1,
    preload: bool = False,
    args: Sequence[str] = (),
) -> Container:
    """Start *app* under *stack* (``"gunicorn"`` or ``"uvicorn"``) on a socket bound here, from
    *cwd*, its output in ``logs/<name>.log``. The process gets this one's environment less any
    ``OTEL_*`` and ``SM_TRACING_*`` variable, plus *env*; *workers*, *preload* and *args* are
    gunicorn's."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    fd = listener.fileno()
    if stack == "gunicorn":
        command = [
            sys.executable, "-m", "gunicorn", "--bind", f"fd://{fd}",
            "--workers", str(workers), "--threads", "4", "--graceful-timeout", "10",
            "--chdir", str(cwd), *(["--preload"] if preload else []), *_no_control_socket(),
            *args, app,
        ]  # fmt: skip
    elif stack == "uvicorn":
        command = [sys.executable, "-c", _UVICORN, str(fd), app]
    else:
        raise ValueError(stack)
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "SM_TRACING_"))
    }
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), environ.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    environ.update(env or {})
    log = logs / f"{name}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, env=environ, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, pass_fds=(fd,)
        )
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    return Container(name, process, url, log)


def wait_ready(container: Container, timeout: float = 30.0) -> None:
    """Wait for ``/ping`` to answer 200; raise with the process's output if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if container.process.poll() is not None:
            break
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(container.url + "/ping", timeout=1) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{container.name} did not start:\n{container.output()}")


def stop(container: Container, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
    """Ask the process to exit with *sig* and wait; killed if it does not. Its exit code."""
    process = container.process
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@contextlib.contextmanager
def serving(container: Container) -> Iterator[Container]:
    """*container* once it answers ``/ping``; stopped on the way out, whatever happens."""
    try:
        wait_ready(container)
        yield container
    finally:
        stop(container)


def otlp_env(name: str, traces_url: str, schedule_delay_ms: int = 50) -> dict[str, str]:
    """The variables that make a container's :func:`sm_tracing.configure` export its spans as
    service *name* over OTLP/HTTP to *traces_url*, in batches every *schedule_delay_ms*."""
    return {
        "OTEL_SERVICE_NAME": name,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": traces_url,
        "OTEL_BSP_SCHEDULE_DELAY": str(schedule_delay_ms),
        # Room for every span of a test run, so a slow export never drops one.
        "OTEL_BSP_MAX_QUEUE_SIZE": "65536",
        # These tests read spans: no metrics exporter looking for a collector elsewhere.
        "OTEL_METRICS_EXPORTER": "none",
    }


def shell_env(collector: str, **variables: str) -> dict[str, str]:
    """This environment without the OTel, sm_tracing and AWS settings of whoever runs the
    tests, exporting over OTLP/HTTP to *collector* (a base URL), as a user's shell with a
    collector would be; plus *variables*. For running an example's scripts as its README
    says."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "SM_TRACING_", "AWS_"))
    }
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        OTEL_EXPORTER_OTLP_ENDPOINT=collector,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        **variables,
    )
    return env


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed, here)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the client side of these tests ------------------------------------------------------------


def in_memory() -> tuple[TracerProvider, InMemorySpanExporter]:
    """A tracer provider exporting synchronously to the in-memory exporter given with it."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def instrument_client(stack: contextlib.ExitStack, provider: TracerProvider) -> None:
    """sm_tracing instrumented with *provider*, from a clean slate (``instrument()`` keeps the
    options of an earlier call), and uninstrumented when *stack* closes."""
    import sm_tracing

    sm_tracing.uninstrument()
    sm_tracing.instrument(tracer_provider=provider)
    stack.callback(sm_tracing.uninstrument)
