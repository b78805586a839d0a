"""The AWS CLI, for the tests that call ``sm-tracing local`` with it, in an environment of its own.

The CLI pins its own botocore, which need not be the one the project is tested with, so it
lives in a virtual environment of its own under ``SM_TRACING_AWS_CLI_VENV`` (by default a folder
in the temporary directory). ``python -m tests._aws_cli`` builds it, as CI does; a test that needs
it is skipped when it is not built (and fails under CI, where it must be), since nothing is
downloaded while the tests run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

VENV_ENV = "SM_TRACING_AWS_CLI_VENV"
# AWS_ENDPOINT_URL_<SERVICE> is read from botocore 1.31.57 on: the CLI releases built on it.
REQUIREMENTS = ("awscli>=1.29.57",)
_BUILD = f"{sys.executable} -m tests._aws_cli"


def home() -> Path:
    """The environment's folder."""
    return Path(os.environ.get(VENV_ENV) or Path(tempfile.gettempdir()) / "sm-tracing-aws-cli")


def _stamp() -> str:
    return hashlib.sha256("\n".join(REQUIREMENTS).encode()).hexdigest()


def build() -> Path:
    """Build the environment when missing or out of date; the ``aws`` command in it."""
    folder = home()
    stamp = folder / ".sm-tracing-stamp"
    aws = folder / "bin" / "aws"
    if stamp.exists() and stamp.read_text() == _stamp() and aws.exists():
        return aws
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    subprocess.run(
        [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet", *REQUIREMENTS],
        check=True,
    )
    stamp.write_text(_stamp())
    return aws


def aws_command() -> Path:
    """The ``aws`` command for a test: skipped when the environment is not built (a failure
    under CI, which builds it first)."""
    folder = home()
    aws = folder / "bin" / "aws"
    stamp = folder / ".sm-tracing-stamp"
    if aws.exists() and stamp.exists() and stamp.read_text() == _stamp():
        return aws
    reason = f"no AWS CLI environment in {folder}: {_BUILD} builds it ({VENV_ENV} names the folder)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


if __name__ == "__main__":
    began = time.monotonic()
    print(f"aws: {build()} ({time.monotonic() - began:.0f} s)", flush=True)
