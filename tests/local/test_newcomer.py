"""What a new user meets: the README's snippets run as they stand and give the traces their text
describes, the package's warnings are visible, and ``dir(sm_tracing)`` shows the public names.

Each snippet runs in a process of its own, as a user would run it, against loopback stand-ins
for AWS and Jaeger: :class:`~sm_tracing.local.LocalRuntime` in front of a model container
(reached through ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` where the snippet makes a plain boto3
client), and an OTLP/HTTP receiver where spans go to ``localhost:4318``.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from _local_support import LocalCommand, ModelContainer, clean_environment
from _otlp_receiver import OTLPReceiver, ReceivedSpan, named
from _serving import Container, wait_ready

import sm_tracing
from sm_tracing.local import LocalRuntime, _command

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
HEADER = "x-amzn-sagemaker-custom-attributes"
CLIENT_SPAN = "SageMaker Runtime.InvokeEndpoint"
CONTAINER_SPAN = "POST /invocations"
TRACEPARENT = re.compile(r"traceparent=00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


# -- the README, read as a user reads it ---------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A fenced code block of the README, under the heading it sits in."""

    heading: str
    language: str
    text: str


def blocks() -> list[Block]:
    """The README's fenced code blocks, in order."""
    found: list[Block] = []
    heading = ""
    fence: tuple[str, list[str]] | None = None
    for line in README.read_text().splitlines():
        if fence is None:
            if line.startswith("```"):
                fence = (line[3:].strip(), [])
            elif line.startswith("#"):
                heading = line.lstrip("#").strip()
        elif line.startswith("```"):
            found.append(Block(heading, fence[0], "\n".join(fence[1]) + "\n"))
            fence = None
        else:
            fence[1].append(line)
    return found


def snippet(heading: str, language: str = "python", index: int = 0) -> str:
    """The *index*-th block of *language* under *heading*."""
    matching = [b.text for b in blocks() if b.heading == heading and b.language == language]
    assert len(matching) > index, f"no {language} block {index} under {heading!r} in README.md"
    return matching[index]


# Every python block of the README, by heading, and the test that runs it.
RUN = {
    "Instrument the client": ["test_client_snippet"],
    "With no code change": ["test_zero_code_snippets"],
    "Continue the trace in the container": ["test_container_and_local_runtime_snippets"] * 2,
    "A local SageMaker runtime for your tests": ["test_container_and_local_runtime_snippets"],
    "Testing your code: Stubber, moto and LocalRuntime": ["test_testing_snippets"] * 4,
}


def test_every_python_snippet_is_run_here() -> None:
    """Each python block of the README is one these tests run, so none drifts unnoticed."""
    counted: dict[str, int] = {}
    for block in blocks():
        if block.language == "python":
            counted[block.heading] = counted.get(block.heading, 0) + 1
    assert counted == {heading: len(tests) for heading, tests in RUN.items()}


# -- running snippets -----------------------------------------------------------------------


def aws_for(runtime: LocalRuntime) -> dict[str, str]:
    """The variables that send a plain boto3 client to *runtime*: what ``~/.aws`` and an
    endpoint name give a user."""
    return {
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": runtime.url,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "AKIDLOCAL",
        "AWS_SECRET_ACCESS_KEY": "local-secret",
    }


def run(command: list[str], env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run *command* to its end; fail with its output when it fails."""
    done = subprocess.run(
        command, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done


def sent(container: ModelContainer) -> str:
    """The one CustomAttributes value that reached the container."""
    (seen,) = container.seen
    return seen.headers[HEADER]


def span(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    (found,) = [s for s in spans if s.name == name]
    return found


@pytest.fixture
def endpoint() -> Iterator[tuple[ModelContainer, LocalRuntime]]:
    """A model container that answers with the body upper-cased, behind a local runtime."""
    with ModelContainer() as container, LocalRuntime(container.url) as runtime:
        yield container, runtime


# -- the client --------------------------------------------------------------------------------


def test_client_snippet(
    tmp_path: Path, receiver: OTLPReceiver, endpoint: tuple[ModelContainer, LocalRuntime]
) -> None:
    """The first snippet sends what its ``# sent:`` comment shows, trace flags included, and
    exports its client span to the OTLP endpoint."""
    code = snippet("Instrument the client")
    (shown,) = re.findall(r'^# sent: CustomAttributes="(.*)"$', code, re.MULTILINE)
    container, runtime = endpoint
    app = tmp_path / "app.py"
    app.write_text(code)
    env = clean_environment(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, **aws_for(runtime))
    done = run([sys.executable, str(app)], env, tmp_path)

    pattern = re.escape(shown).replace("<trace\\-id>", "([0-9a-f]{32})")
    pattern = with_trace_flags(pattern.replace("<span\\-id>", "([0-9a-f]{16})"))
    value = sent(container)
    match = re.fullmatch(pattern, value)
    assert match, f"sent {value!r}, the README shows {shown!r}"
    assert done.stdout == 'b\'{"INPUTS": "HELLO"}\'\n'
    assert done.stderr == ""
    client = receiver.wait_for(named(CLIENT_SPAN))[0]
    assert (client.trace_id, client.span_id) == match.groups()
    assert client.service == "my-client"


def zero_code_commands() -> list[str]:
    """The README's ``opentelemetry-instrument`` command lines."""
    text = "".join(b.text for b in blocks() if b.heading == "With no code change")
    commands = [line for line in text.replace("\\\n", "").splitlines() if "instrument " in line]
    assert len(commands) == 2, commands
    return commands


@pytest.mark.parametrize("command", zero_code_commands(), ids=["console", "otlp"])
def test_zero_code_snippets(
    tmp_path: Path,
    receiver: OTLPReceiver,
    endpoint: tuple[ModelContainer, LocalRuntime],
    command: str,
) -> None:
    """``opentelemetry-instrument python app.py``, with the variables the README gives and the
    ``auto`` extra installed, traces a plain boto3 script: the traceparent reaches the
    container and the client span is printed, or exported over OTLP/HTTP."""
    container, runtime = endpoint
    (tmp_path / "app.py").write_text(snippet("With no code change"))
    words = shlex.split(command)
    variables = dict(word.split("=", 1) for word in words if "=" in word)
    argv = [word for word in words if "=" not in word]
    assert argv == ["opentelemetry-instrument", "python", "app.py"]
    # Spans go where the distro sends them by default (localhost:4318) in the user's run.
    env = clean_environment(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, **aws_for(runtime))
    env.update(variables)
    done = run([str(BIN / argv[0]), sys.executable, argv[2]], env, tmp_path)

    match = TRACEPARENT.search(sent(container))
    assert match, sent(container)
    trace_id, span_id, _ = match.groups()
    assert "Traceback" not in done.stderr
    assert "Failed to export" not in done.stderr
    if variables.get("OTEL_TRACES_EXPORTER") == "console":
        answer, _, printed_span = done.stdout.partition("\n")
        assert answer == "b'{}'"  # the container's answer: the body, upper-cased
        printed = json.loads(printed_span)
        assert printed["name"] == CLIENT_SPAN
        assert printed["context"]["trace_id"] == "0x" + trace_id
        assert printed["context"]["span_id"] == "0x" + span_id
        assert printed["kind"] == "SpanKind.CLIENT"
    else:
        client = receiver.wait_for(named(CLIENT_SPAN))[0]
        assert (client.trace_id, client.span_id) == (trace_id, span_id)
        assert client.service == "my-client"


# -- the container and the local runtime -------------------------------------------------------


def serve(
    app_dir: Path, stack: str, env: Mapping[str, str], args: Sequence[str] = ("app:app",)
) -> Container:
    """Serve ``app_dir/app.py`` as the README says (*args* after the address), on a loopback
    socket bound here."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    fd = listener.fileno()
    if stack == "gunicorn":
        command = [sys.executable, "-m", "gunicorn", "--bind", f"fd://{fd}", *args]
    else:
        command = [sys.executable, "-m", "uvicorn", "--fd", str(fd), *args]
    log = app_dir / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            cwd=app_dir,
            env=dict(env),
            stdout=sink,
            stderr=subprocess.STDOUT,
            pass_fds=(fd,),
        )
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    server = Container(stack, process, url, log)
    try:
        wait_ready(server)
    except RuntimeError:
        process.kill()
        process.wait()
        raise
    return server


@pytest.mark.parametrize(("index", "stack"), [(0, "gunicorn"), (1, "uvicorn")])
def test_container_and_local_runtime_snippets(
    tmp_path: Path, receiver: OTLPReceiver, index: int, stack: str
) -> None:
    """The Flask and FastAPI containers of the README, served as it says, behind the README's
    LocalRuntime snippet: the answer is printed, and the call is one trace of two spans, the
    container span under the client span (no other trace, no ping span)."""
    app_dir = tmp_path / stack
    app_dir.mkdir()
    (app_dir / "app.py").write_text(snippet("Continue the trace in the container", index=index))
    # The spans go where the README's go (localhost:4318) when a user runs them.
    env = clean_environment(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="50")
    server = serve(app_dir, stack, env)
    try:
        code = snippet("A local SageMaker runtime for your tests")
        assert code.count('"http://127.0.0.1:8080"') == 1
        (tmp_path / "client.py").write_text(code.replace("http://127.0.0.1:8080", server.url))
        done = run([sys.executable, "client.py"], env, tmp_path)
        (comment,) = re.findall(r"\.decode\(\)\)  # (.*)$", code, re.MULTILINE)
        assert done.stdout.strip() == comment
        assert done.stderr == ""
        spans = receiver.wait_for(named(CONTAINER_SPAN))
    finally:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(30)
    spans = receiver.spans  # all of them: the server flushed its spans on its way out
    assert sorted(s.name for s in spans) == [CONTAINER_SPAN, CLIENT_SPAN]
    client, container = span(spans, CLIENT_SPAN), span(spans, CONTAINER_SPAN)
    assert client.service == "my-client"
    assert container.service == "my-model"
    assert container.trace_id == client.trace_id
    assert container.parent_id == client.span_id
    assert "nothing is listening" not in server.output()


# -- without an AWS account: sm-tracing local -------------------------------------------------

NO_AWS = "Without an AWS account"


def shown_line(text: str) -> re.Pattern[str]:
    """The README's example of a call's line as a pattern: its time, duration and ids are
    placeholders; the ids are captured, in order."""
    pattern = re.escape(text.strip())
    for shown, wanted in (
        (r"12:00:00", r"\d\d:\d\d:\d\d"),
        (r"4\.2\ ms", r"[0-9.]+\ ms"),
        (r"<trace\-id>", r"([0-9a-f]{32})"),
        (r"<span\-id>", r"([0-9a-f]{16})"),
        (r"<container\-span\-id>", r"([0-9a-f]{16})"),
        (r"<microseconds>", r"\d+"),
    ):
        assert shown in pattern, f"{shown} is not in the README's line"
        pattern = pattern.replace(shown, wanted)
    return re.compile(with_trace_flags(pattern))


def with_trace_flags(pattern: str) -> str:
    """*pattern* (the README's text escaped, its span ids made groups) taking the trace flags
    every supported SDK sends after a span id: the README shows what opentelemetry-sdk 1.42
    and later send, sampled and random trace id (03); earlier releases send sampled (01)."""
    span_id = "([0-9a-f]{16})"
    assert f"{span_id}\\-03" in pattern, pattern
    return pattern.replace(f"{span_id}\\-03", f"{span_id}\\-0[13]")


def test_no_aws_snippets(tmp_path: Path, receiver: OTLPReceiver) -> None:
    """The README's run without AWS, as written (ports aside): its container and
    ``sm-tracing local`` commands start them, its ``export`` lines are what ``sm-tracing local``
    prints, the client snippet then runs unchanged, the line printed for the call has the
    README's shape, and the client and container spans form one trace."""
    shells = [b.text for b in blocks() if b.heading == NO_AWS and b.language == "sh"]
    assert len(shells) == 2, f"README.md has {len(shells)} sh blocks under {NO_AWS!r}, not 2"
    start, second_shell = shells
    (shown,) = [b.text for b in blocks() if b.heading == NO_AWS and b.language == "text"]
    commands = [shlex.split(line) for line in start.splitlines() if line.strip()]
    assert [argv[0] for argv in commands] == ["gunicorn", "sm-tracing"]
    (tmp_path / "app.py").write_text(snippet("Continue the trace in the container", index=0))
    (tmp_path / "client.py").write_text(snippet("Instrument the client"))
    env = clean_environment(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="50")

    # The container, on a socket bound here rather than the README's port 8080.
    gunicorn = commands[0]
    assert gunicorn[-1] == "&" and gunicorn[1:3] == ["--bind", "127.0.0.1:8080"], gunicorn
    server = serve(tmp_path, "gunicorn", env, args=gunicorn[3:-1])
    try:
        # sm-tracing local as the README starts it, in front of that container, on a free port.
        argv = [word.replace("http://127.0.0.1:8080", server.url) for word in commands[1]]
        assert argv != commands[1], "the README's sm-tracing local names another container"
        with LocalCommand(argv=[str(BIN / argv[0]), *argv[1:], "--port", "0"], env=env) as local:
            readme_url = f"http://127.0.0.1:{_command.DEFAULT_PORT}"
            lines = second_shell.strip().splitlines()
            assert lines[-1] == "python client.py"
            printed = [line for line in local.banner if line.startswith("export ")]
            assert [line.replace(local.url, readme_url) for line in printed] == lines[:-1]
            done = run([sys.executable, "client.py"], {**env, **local.exports}, tmp_path)
            assert done.stderr == ""
            line = local.line("InvokeEndpoint my-llm: ")
        spans = receiver.wait_for(named(CONTAINER_SPAN))
    finally:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(30)
    match = shown_line(shown).fullmatch(line)
    assert match, f"printed {line!r}, the README shows {shown.strip()!r}"
    client, container = span(spans, CLIENT_SPAN), span(spans, CONTAINER_SPAN)
    assert match.groups() == (client.trace_id, client.span_id, client.trace_id, container.span_id)
    assert container.parent_id == client.span_id


# -- testing your code: Stubber, moto and LocalRuntime --------------------------------------

TESTING = "Testing your code: Stubber, moto and LocalRuntime"


def test_testing_snippets(tmp_path: Path) -> None:
    """The README's testing snippets pass as a user's tests: the first block is their
    fixture (a conftest.py), each other block a test file, run by pytest in a process of its
    own."""
    fixture, *tests = [b.text for b in blocks() if b.heading == TESTING and b.language == "python"]
    (tmp_path / "conftest.py").write_text(fixture)
    for index, code in enumerate(tests):
        (tmp_path / f"test_readme_{index}.py").write_text(code)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:ddtrace"],
        cwd=tmp_path,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(tests)} passed" in done.stdout, done.stdout


# -- visible warnings, a tidy namespace --------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "variables", "warning"),
    [
        (
            "sm_tracing.configure(exporter='none'); sm_tracing.configure(exporter='none')",
            {},
            "sm_tracing.configure() was already called",
        ),
        (
            "sm_tracing.continue_trace(None)",
            {"SM_TRACING_REMOTE_CONTEXT": "bogus"},
            "ignoring SM_TRACING_REMOTE_CONTEXT='bogus'",
        ),
    ],
)
def test_warnings_reach_stderr_without_logging_set_up(
    code: str, variables: dict[str, str], warning: str
) -> None:
    """In an application that configured no logging, our warnings print on stderr, as
    OpenTelemetry's own do."""
    env = clean_environment(**variables)
    done = run([sys.executable, "-c", f"import sm_tracing\n{code}"], env, ROOT)
    assert warning in done.stderr


def test_warnings_follow_the_application_logging() -> None:
    """With logging configured, our warnings go through its handlers, once."""
    code = (
        "import logging, sys, sm_tracing\n"
        "logging.basicConfig(stream=sys.stdout, format='%(name)s|%(levelname)s|%(message)s')\n"
        "sm_tracing.configure(exporter='none')\n"
        "sm_tracing.configure(exporter='none')\n"
    )
    done = run([sys.executable, "-c", code], clean_environment(), ROOT)
    assert done.stderr == ""
    assert done.stdout.splitlines() == [
        "sm_tracing._configure|WARNING|"
        "sm_tracing.configure() was already called; keeping that provider"
    ]


def test_dir_lists_the_public_names() -> None:
    """``dir(sm_tracing)`` is the public names and the module's dunders: no import leftovers."""
    names = dir(sm_tracing)
    public = [name for name in names if not name.startswith("_")]
    assert public == sorted(name for name in sm_tracing.__all__ if not name.startswith("_"))
    assert all(name.startswith("__") for name in names if name.startswith("_"))
    for leftover in ("Any", "TYPE_CHECKING", "annotations", "import_module", "logging"):
        assert leftover not in names
    for name in sm_tracing.__all__:
        assert getattr(sm_tracing, name) is not None
