"""The ``sm-tracing`` command: each subcommand is a module whose ``main(argv)`` runs it."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from sm_tracing.version import __version__

# Subcommand -> (the module whose main(argv) runs it, its line in ``sm-tracing --help``).
# Imported only when run, so each command's dependencies stay its own.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "sm_tracing._demo.command",
        "run a traced invocation end to end on this machine and print the traces",
    ),
    "local": (
        "sm_tracing.local._command",
        "serve the SageMaker Runtime API on a port, in front of a model container you started",
    ),
    "proxy": (
        "sm_tracing.container._proxy",
        "trace invocations in front of a model server that reads traceparent (TGI, vLLM, ...)",
    ),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sm-tracing",
        description="OpenTelemetry tracing through Amazon SageMaker endpoints.",
        epilog="sm-tracing COMMAND --help says what a command does and takes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, summary) in COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sm-tracing`` with *argv* (default: the command line); the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        module, _ = COMMANDS[args[0]]
        command = importlib.import_module(module)
        return int(command.main(args[1:]))
    parser = _parser()
    # Here only for --help, --version, or to refuse an unknown command (argparse exits).
    parser.parse_args(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
