"""The ``sm-tracing`` command: its subcommands, help, version, arguments, the install lines it
prints, and what it says when the demo cannot run."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sm_tracing import _cli as cli
from sm_tracing._demo import command as demo_command
from sm_tracing._hints import install_hint
from sm_tracing.version import __version__

DEMO_HINT = "pip install 'sm-tracing[demo]' (from a clone: pip install -e '.[demo]')"


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


def test_help_lists_the_commands() -> None:
    """``--help`` exits 0 and names every command with its summary."""
    result = run_cli("--help")
    assert result.returncode == 0
    assert "usage: sm-tracing" in result.stdout
    text = " ".join(result.stdout.split())
    for name, (_, summary) in cli.COMMANDS.items():
        assert f"{name} {summary}" in text


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_each_command_is_a_main_taking_argv(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each command's module has a ``main(argv)``, which ``sm-tracing NAME --help`` reaches
    with the arguments after the command's name."""
    module, _ = cli.COMMANDS[name]
    assert callable(importlib.import_module(module).main)
    with pytest.raises(SystemExit) as exited:
        cli.main([name, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: sm-tracing {name} ")


def test_an_unknown_command_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown command exits 2, listing the ones there are."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["bogus"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    # Python 3.12.8 and later quote the choices no more: only their names are compared.
    assert "invalid choice: 'bogus' (choose from " in err
    assert re.findall(r"'?(\w+)'?[,)]", err.partition("choose from ")[2]) == list(cli.COMMANDS)


@pytest.mark.parametrize(
    ("extras", "expected"),
    [
        (("flask",), "pip install 'sm-tracing[flask]' (from a clone: pip install -e '.[flask]')"),
        (
            ("demo", "bidi"),
            "pip install 'sm-tracing[demo,bidi]' (from a clone: pip install -e '.[demo,bidi]')",
        ),
        ((), "pip install 'sm-tracing' (from a clone: pip install -e '.')"),
    ],
)
def test_install_hint_names_pypi_and_a_clone(extras: tuple[str, ...], expected: str) -> None:
    """The install line names the package on PyPI and the editable install from a clone."""
    assert install_hint(*extras) == expected


def printed_strings(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """The strings of *tree* that are not docstrings, with their line: constants, and f-strings
    as their constant parts."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                skipped.add(id(body[0].value))
        elif isinstance(node, ast.JoinedStr):
            parts = [v for v in node.values if isinstance(v, ast.Constant)]
            skipped.update(id(part) for part in parts)
            yield node.lineno, "".join(str(part.value) for part in parts)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in skipped
        ):
            yield node.lineno, node.value


def test_every_install_line_names_pypi_and_a_clone() -> None:
    """Every ``pip install`` line the package can print names the install from a clone beside
    the one from PyPI (``install_hint`` writes both), since one of them fails wherever the
    package is not on the index, or the current folder is not a clone."""
    package = Path(cli.__file__).parent
    found = []
    for path in sorted(package.rglob("*.py")):
        for line, text in printed_strings(ast.parse(path.read_text())):
            if "pip install" in text and "from a clone" not in text:
                found.append(f"{path.relative_to(package)}:{line}")
    assert found == [], "use sm_tracing._hints.install_hint"


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
        install_hint("demo", "bidi"),
        DEMO_HINT,
    ):
        assert expected in text
    assert "http://localhost:16686" in text
    assert "linked" in text


def test_demo_timeout_names_the_option() -> None:
    """When the demo runs out of time it names ``--timeout`` and the value it had, so the way
    to give it longer is plain."""
    began = time.monotonic()
    result = run_cli("demo", "--timeout", "0.01")
    assert result.returncode == 1
    assert time.monotonic() - began < 30
    first = result.stderr.splitlines()[0]
    assert first == (
        "sm-tracing demo failed: the realtime container did not start within --timeout 0.01"
        " seconds (a larger --timeout gives it longer):"
    )


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
    args = demo_command.parser().parse_args([])
    assert args.otlp_endpoint == expected
    args = demo_command.parser().parse_args(["--otlp-endpoint", "http://given:4318"])
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
    assert err.strip().endswith(DEMO_HINT)
    assert f"needs {distribution}:" in err
