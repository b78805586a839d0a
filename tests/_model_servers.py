"""Real model servers for the tests, started on loopback the way SageMaker starts them.

Multi Model Server runs from the test's own environment. TorchServe (with the SageMaker PyTorch
toolkit) and the Hugging Face toolkit each run from a virtual environment of their own: the
PyTorch toolkit ships a cut-down ``sagemaker_inference`` that overwrites the real one, and both
need PyTorch. Those environments live under ``SM_TRACING_SERVER_VENVS`` (by default a folder in
the temporary directory) and are built on first use; ``python -m tests._model_servers`` builds
them ahead of the tests, as CI does.

A server is started by its own launcher in a process of its own, with every process it starts
marked in its environment, so that stopping it ends exactly those. The workers export their
spans over OTLP/HTTP to a receiver in the test.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENVS_ENV = "SM_TRACING_SERVER_VENVS"
_MARKER = "SM_TRACING_TEST_SERVER"
# What each environment holds besides this project (installed editable, with its OTLP
# exporter). torch 2.13.0 is the CPU build; setuptools<81 still has the pkg_resources that the
# launchers import.
ENVIRONMENTS: dict[str, tuple[str, ...]] = {
    "torchserve": (
        "setuptools<81",
        "torch==2.13.0",
        "pyyaml",
        "torchserve==0.12.0",
        "torch-model-archiver==0.12.0",
        "sagemaker-pytorch-inference==2.0.25",
    ),
    "huggingface": (
        "setuptools<81",
        "torch==2.13.0",
        "multi-model-server==1.1.11",
        "sagemaker-huggingface-inference-toolkit==2.6.0",
        "transformers<5",
    ),
}


def _venvs() -> Path:
    return Path(os.environ.get(VENVS_ENV) or Path(tempfile.gettempdir()) / "sm-tracing-servers")


def _stamp(name: str) -> str:
    # The checkout is part of it: the project is installed editable from there.
    return hashlib.sha256("\n".join((str(ROOT), *ENVIRONMENTS[name])).encode()).hexdigest()


def build(name: str) -> Path:
    """The bin folder of environment *name*, built first when missing or out of date.

    Raises CalledProcessError when the packages can't be installed."""
    home = _venvs() / name
    home.parent.mkdir(parents=True, exist_ok=True)
    # Test runs at the same time build each environment once, one after the other.
    with open(home.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(name, home)


def _build(name: str, home: Path) -> Path:
    stamp = home / ".sm-tracing-stamp"
    bin_dir = home / "bin"
    if stamp.exists() and stamp.read_text() == _stamp(name):
        return bin_dir
    shutil.rmtree(home, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(home)], check=True)
    subprocess.run(
        [
            str(bin_dir / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            *ENVIRONMENTS[name],
            "-e",
            f"{ROOT}[otlp]",
        ],
        check=True,
    )
    stamp.write_text(_stamp(name))
    return bin_dir


def environment(name: str) -> Path:
    """The bin folder of environment *name* for a test: built when missing; the test is skipped
    when it can't be (and fails in CI, where it must run)."""
    try:
        return build(name)
    except (OSError, subprocess.CalledProcessError) as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"could not install the {name} environment ({exc}); CI installs it")


def low_port() -> int:
    """A free loopback port below 32767, which Multi Model Server rejects."""
    for _ in range(200):
        port = random.randrange(20_000, 32_000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port below 32767")


def ports(count: int) -> list[int]:
    """*count* distinct free ports below 32767."""
    found: set[int] = set()
    while len(found) < count:
        found.add(low_port())
    return sorted(found)


def write_model(folder: Path, code: str, **files: str) -> Path:
    """A SageMaker model folder (``/opt/ml/model``): ``code/inference.py`` holding *code*."""
    (folder / "code").mkdir(parents=True, exist_ok=True)
    (folder / "code" / "inference.py").write_text(code)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


class ModelServer:
    """A model server started by *command* in its own process, stopped with every process it
    started (found by the marker in their environment)."""

    def __init__(
        self,
        command: list[str],
        *,
        port: int,
        env: Mapping[str, str],
        cwd: Path,
        service: str,
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.service = service
        self._command = command
        self._cwd = cwd
        self._log = cwd / "server.log"
        self._marker = f"{cwd}:{port}"
        self._env = {
            **{key: value for key, value in os.environ.items() if not key.startswith("OTEL_")},
            **env,
            _MARKER: self._marker,
            "OTEL_SERVICE_NAME": service,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        self._process: subprocess.Popen[bytes] | None = None
        self.started_in = 0.0

    def start(self, timeout: float = 240.0) -> ModelServer:
        """Start it and wait until ``/ping`` answers Healthy."""
        began = time.monotonic()
        with open(self._log, "wb") as log:
            self._process = subprocess.Popen(
                self._command,
                cwd=self._cwd,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = began + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None and not self._others():
                break
            if self._healthy():
                self.started_in = time.monotonic() - began
                return self
            time.sleep(0.25)
        self.stop()
        raise AssertionError(f"{self._command[:3]} did not become healthy:\n{self.log_tail()}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/ping", timeout=2) as response:
                return response.status == 200 and b"Healthy" in response.read()
        except (OSError, urllib.error.URLError):
            return False

    def _others(self) -> list[Any]:
        import psutil

        found = []
        for process in psutil.process_iter():
            try:
                if process.environ().get(_MARKER) == self._marker:
                    found.append(process)
            except (psutil.Error, OSError):
                continue
        return found

    def stop(self) -> None:
        """End the launcher, the Java front end and its Python workers."""
        import psutil

        processes = self._others()
        for process in processes:
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(processes, timeout=15)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(alive, timeout=5)
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(5)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def launcher(python_lines: Iterable[str]) -> str:
    """A launcher script of *python_lines*."""
    return "\n".join(python_lines) + "\n"


def post(url: str, body: Any, custom_attributes: str | None, timeout: float = 60.0) -> Any:
    """POST *body* as JSON with CustomAttributes; the response (status, headers, JSON body)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    if custom_attributes is not None:
        request.add_header("X-Amzn-SageMaker-Custom-Attributes", custom_attributes)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


if __name__ == "__main__":
    for each in sys.argv[1:] or sorted(ENVIRONMENTS):
        began = time.monotonic()
        print(f"{each}: {build(each)} ({time.monotonic() - began:.0f} s)", flush=True)
