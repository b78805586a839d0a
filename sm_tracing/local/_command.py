"""``sm-tracing local``: the SageMaker Runtime API on a port, in front of a model container that
the user started, for any client on this machine (boto3, the AWS CLI, the SageMaker SDK).

It prints the variables that send those clients there, and one line per invocation with the
CustomAttributes at each hop: as the caller sent them (forwarded to the container as they came,
as SageMaker forwards them) and as the container answered. A development tool may show what it
forwards; the library itself never logs CustomAttributes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TextIO

from sm_tracing._hints import command_parser
from sm_tracing.local._calls import Call
from sm_tracing.local._runtime import LocalRuntime

# Not 8080, where SageMaker containers listen, nor TorchServe's 8081 and 8082: the container
# this forwards to is likely on one of them.
DEFAULT_PORT = 8780
REGION = "us-east-1"
# Any credentials do: requests must be signed, and signatures are not checked.
CREDENTIALS = ("local", "local")
DEFAULT_OUTPUT = "s3://sm-tracing-local/async-output"

_DESCRIPTION = """\
Serve the SageMaker Runtime API (InvokeEndpoint, InvokeEndpointWithResponseStream,
InvokeEndpointAsync) on this machine, and forward every endpoint name to the model container
at --container: a container you started (gunicorn, uvicorn, a model server), answering
POST /invocations as SageMaker calls it. Only the headers SageMaker forwards reach it;
CustomAttributes go both ways as they came.

It prints the lines that send a client here (boto3, the AWS CLI, the SageMaker SDK):
export them in the client's shell. Then, for each call, one line with the CustomAttributes
the caller sent (with the trace context an instrumented client merged in) and those the
container answered (with its traceresponse).

Async calls read an InputLocation s3://BUCKET/KEY from DIR/BUCKET/KEY, DIR being the
--s3-root folder (a file:// URI is read as it is), and write their result to
--s3-output-path, under that folder too. Ctrl-C or SIGTERM stops it.
"""


def parser() -> argparse.ArgumentParser:
    """The arguments of ``sm-tracing local``."""
    parser = command_parser("local", _DESCRIPTION)
    parser.add_argument(
        "--container",
        metavar="URL",
        required=True,
        help="the model container every endpoint name goes to, such as http://127.0.0.1:8080",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="the port to listen on; 0 for any free port (default: %(default)s)",
    )
    parser.add_argument(
        "--s3-root",
        metavar="DIR",
        type=Path,
        help="the folder standing in for S3: s3://BUCKET/KEY is DIR/BUCKET/KEY (default: a "
        "temporary folder, removed on exit)",
    )
    parser.add_argument(
        "--s3-output-path",
        metavar="URI",
        default=DEFAULT_OUTPUT,
        help="where async results are written, as <InferenceId>.out, failures as "
        "<InferenceId>-error.out (default: %(default)s)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what sm_tracing does")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sm-tracing local`` with *argv* (default: the command line) until Ctrl-C or
    SIGTERM; the exit status."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose:
        logging.getLogger("sm_tracing").setLevel(logging.DEBUG)
    with contextlib.ExitStack() as stack:
        if args.s3_root is None:
            s3_root = Path(tempfile.mkdtemp(prefix="sm-tracing-local-s3-"))
            stack.callback(shutil.rmtree, s3_root, ignore_errors=True)
        else:
            s3_root = args.s3_root.resolve()
            s3_root.mkdir(parents=True, exist_ok=True)
        try:
            runtime = LocalRuntime(
                args.container,
                host=args.host,
                port=args.port,
                s3_root=s3_root,
                output_location=args.s3_output_path,
            )
        except ValueError as exc:
            print(f"sm-tracing local: {exc}", file=sys.stderr)
            return 2
        printer = _Printer(sys.stdout)
        runtime._observer = printer
        stop = stack.enter_context(_stop_on_signals())
        try:
            runtime.start()
        except OSError as exc:
            print(
                f"sm-tracing local: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
                " (--port 0 takes any free port)",
                file=sys.stderr,
            )
            return 1
        stack.callback(runtime.close)
        _introduce(runtime, args.container, s3_root, kept=args.s3_root is not None)
        _check_container(args.container)
        # Polled: the signal may land on a serving thread, and the main thread runs its handler
        # only once it wakes.
        while not stop.wait(0.1):
            pass
        printer.say("sm-tracing local: stopping")
    return 0


def _introduce(runtime: LocalRuntime, container: str, s3_root: Path, *, kept: bool) -> None:
    """Print where it listens, the lines that send a client here, and where async results go."""
    key, secret = CREDENTIALS
    output = runtime.output_location
    where = "" if kept else " (a temporary folder, removed on exit: --s3-root DIR keeps it)"
    lines = [
        f"sm-tracing local: the SageMaker Runtime API on {runtime.url}, every endpoint name "
        f"forwarded to {container}",
        "",
        "In the shell of a client (boto3, the AWS CLI, the SageMaker SDK):",
        "",
        f"export AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME={runtime.url}",
        f"export AWS_DEFAULT_REGION={REGION}",
        f"export AWS_ACCESS_KEY_ID={key}",
        f"export AWS_SECRET_ACCESS_KEY={secret}",
        "",
        f"S3 is {s3_root}{where}: async calls read s3://BUCKET/KEY from {s3_root}/BUCKET/KEY "
        f"and write results to {output}/<InferenceId>.out.",
        "One line per call: the CustomAttributes the caller sent (forwarded to the container as "
        "they came) and those the container answered. Ctrl-C stops.",
        "",
    ]
    print("\n".join(lines), flush=True)


def _check_container(url: str) -> None:
    """Say on stderr when the container does not answer ``GET /ping`` (yet)."""
    ping = url.rstrip("/") + "/ping"
    try:
        with urllib.request.urlopen(ping, timeout=2) as response:
            if response.status == 200:
                return
            problem = f"answers {response.status}"
    except OSError as exc:
        problem = f"does not answer ({getattr(exc, 'reason', exc)})"
    print(
        f"sm-tracing local: GET {ping} {problem}: calls get ModelError until the container is up",
        file=sys.stderr,
        flush=True,
    )


class _Printer:
    """Prints one line per call, whole, whichever thread served it."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def __call__(self, call: Call) -> None:
        self.say(describe(call))

    def say(self, line: str) -> None:
        with self._lock:
            print(line, file=self._out, flush=True)


def describe(call: Call) -> str:
    """One call as one line: when, what, how it ended, and its CustomAttributes at each hop."""
    outcome = f"{call.status or 'no answer'}"
    if call.error:
        outcome += f" {call.error}"
    outcome += f" in {call.seconds * 1e3:.1f} ms"
    if call.output:
        outcome += f", written to {call.output}"
    back = "container answered" if call.operation == "InvokeEndpointAsync" else "container->caller"
    return (
        f"{time.strftime('%H:%M:%S')} {call.operation} {call.endpoint}: {outcome}"
        f" | CustomAttributes caller->container: {_value(call.sent)}"
        f" | {back}: {_value(call.answered)}"
    )


def _value(value: str | None) -> str:
    return "(none)" if value is None else f'"{value}"'


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT (Ctrl-C) or SIGTERM while in the block; the handlers before it
    are put back on the way out."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        # Signal handlers belong to the main thread: elsewhere, wait for the event alone.
        yield stop
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
