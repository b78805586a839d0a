"""The ``sm-tracing`` command: help, version, arguments, and what it says when the demo
cannot run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sm_tracing import _cli as cli
from sm_tracing.version import __version__


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``sm-tracing`` run as its own process, as the console script runs it."""
    code = "import sys; from sm_tracing._cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_lists_the_demo() -> None:
    """``--help`` exits 0 and names the demo command."""
    result = run_cli("--help")
    assert result.returncode == 0
    assert "demo" in result.stdout
    assert "usage: sm-tracing" in result.stdout


def test_demo_help_explains() -> None:
    """``demo --help`` explains what runs, what it prints, its options, Jaeger and the extra it
    needs."""
    result = run_cli("demo", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for expected in (
        "--otlp-endpoint URL",
        "--jaeger-url URL",
        "gunicorn",
        "no AWS account",
        "SageMaker's share",
        "time to first chunk",
        "pip install 'sm-tracing[demo,bidi]'",
    ):
        assert expected in text
    assert "http://localhost:16686" in text
    assert "pip install 'sm-tracing[demo]'" in text
    assert "linked" in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """``--version`` prints the package version."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"sm-tracing {__version__}"


def test_no_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a command it prints the help and exits 2."""
    assert cli.main([]) == 2
    assert "usage: sm-tracing" in capsys.readouterr().out


def test_unknown_option_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown option is refused by argparse with exit status 2."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["demo", "--bogus"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "http://collector:4318"),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://jaeger:4318/v1/traces",
            },
            "http://jaeger:4318/v1/traces",
        ),
    ],
)
def test_otlp_endpoint_defaults_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], expected: str | None
) -> None:
    """Without --otlp-endpoint the demo exports where the standard variables say, if set."""
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    args = cli._parser().parse_args(["demo"])
    assert args.otlp_endpoint == expected
    args = cli._parser().parse_args(["demo", "--otlp-endpoint", "http://given:4318"])
    assert args.otlp_endpoint == "http://given:4318"


@pytest.mark.parametrize(
    ("module", "distribution"),
    [
        ("flask", "Flask"),
        ("gunicorn", "gunicorn"),
        ("opentelemetry.exporter.otlp.proto.http", "opentelemetry-exporter-otlp-proto-http"),
    ],
)
def test_demo_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    module: str,
    distribution: str,
) -> None:
    """Without Flask, gunicorn or the OTLP exporter the demo exits 2 and names what is
    missing and the extra to install."""
    monkeypatch.setitem(sys.modules, module, None)  # makes the module unimportable
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'sm-tracing[demo]'" in err
    assert f"needs {distribution}:" in err
