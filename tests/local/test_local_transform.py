"""Batch transform through LocalRuntime, driven by a real botocore ``sagemaker`` client: records
read from files, sent to the container alone or in mini-batches, written back as ``.out``
files, and the job's Environment given to the container process."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _local_support import (
    SERVING_APPS,
    ModelContainer,
    Reply,
    Seen,
    TransformContainers,
    put,
    runtime_client,
)
from botocore.exceptions import ClientError

from sm_tracing.local import LocalRuntime, LocalTransformJob

# A container answering each request with the records it got and the environment it runs in,
# as a WSGI app (for gunicorn) and an ASGI app (for uvicorn).
_APP = (
    """\
import json, os

NAMES = ("JOB_MARK", "SAGEMAKER_BATCH", "SAGEMAKER_BATCH_STRATEGY", "SAGEMAKER_MAX_PAYLOAD_IN_MB")


def answer(path, body):
    if path == "/ping":
        return b""
    seen = {name: os.environ.get(name) for name in NAMES}
    return json.dumps({"records": body.decode().split("\\n"), **seen}).encode()
"""
    + SERVING_APPS
    + "wsgi, asgi = _wsgi, _asgi\n"
)

_MANIFEST = {"S3DataType": "ManifestFile", "S3Uri": "s3://in/manifest"}


@dataclass
class Transform:
    """A model container, a runtime in front of it and a boto3 ``sagemaker`` client."""

    container: ModelContainer | None  # None where each job starts its own
    runtime: LocalRuntime
    client: Any

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        """Create the job, wait for it to end, and describe it."""
        self.client.create_transform_job(**request)
        assert self.runtime.wait_transform_jobs(30)
        answer: dict[str, Any] = self.client.describe_transform_job(
            TransformJobName=request["TransformJobName"]
        )
        return answer


@pytest.fixture
def transform(tmp_path: Path) -> Iterator[Transform]:
    """A container echoing upper-cased, serving every model of a LocalRuntime that maps
    s3:// under ``tmp_path/s3``, and a ``sagemaker`` client."""
    with (
        ModelContainer() as container,
        LocalRuntime(container.url, s3_root=tmp_path / "s3") as runtime,
    ):
        yield Transform(container, runtime, runtime_client(runtime.url, "sagemaker"))


def _job(name: str = "job-1", **params: Any) -> dict[str, Any]:
    """A CreateTransformJob request reading s3://in/records/ and writing s3://out/<name>."""
    request: dict[str, Any] = {
        "TransformJobName": name,
        "ModelName": "model-a",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://in/records/"}},
            "ContentType": "text/csv",
            "SplitType": "Line",
        },
        "TransformOutput": {"S3OutputPath": f"s3://out/{name}", "Accept": "text/csv"},
        "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
    }
    for key, value in params.items():
        if isinstance(value, dict) and isinstance(request.get(key), dict):
            request[key] = {**request[key], **value}
        else:
            request[key] = value
    return request


def test_single_records_are_sent_one_by_one_and_written_per_file(
    transform: Transform, tmp_path: Path
) -> None:
    """SplitType Line with SingleRecord: one call per line, with the job's content type and
    accept and no CustomAttributes; each input file gives <file>.out under the output path,
    one answer a line with AssembleWith Line."""
    put(tmp_path, "in/records/a.csv", b"1,2\n3,4\n")
    put(tmp_path, "in/records/more/b.csv", b"5,6\r\n\n7,8")
    put(tmp_path, "in/other/c.csv", b"not under the prefix")
    described = transform.run(
        _job(BatchStrategy="SingleRecord", TransformOutput={"AssembleWith": "Line"}),
    )
    assert described["TransformJobStatus"] == "Completed", described.get("FailureReason")
    assert sorted(seen.body for seen in transform.container.seen) == [
        b"1,2",
        b"3,4",
        b"5,6",
        b"7,8",
    ]
    for seen in transform.container.seen:
        assert seen.path == "/invocations"
        assert seen.headers["content-type"] == "text/csv"
        assert seen.headers["accept"] == "text/csv"
        assert not any(name.startswith("x-amzn-sagemaker") for name in seen.headers)
    out = tmp_path / "s3" / "out" / "job-1"
    assert (out / "a.csv.out").read_bytes() == b"1,2\n3,4\n"
    assert (out / "more" / "b.csv.out").read_bytes() == b"5,6\n7,8\n"
    assert sorted(path.name for path in out.rglob("*")) == ["a.csv.out", "b.csv.out", "more"]
    job = transform.runtime.transform_job("job-1")
    assert job.invocations == 4
    assert sorted(job.outputs) == [out / "a.csv.out", out / "more" / "b.csv.out"]
    assert described["TransformJobArn"].endswith(":transform-job/job-1")
    assert described["TransformEndTime"] >= described["CreationTime"]


def test_multi_record_batches_fill_max_payload(transform: Transform, tmp_path: Path) -> None:
    """MultiRecord sends as many whole lines as fit in MaxPayloadInMB, joined by newlines;
    with AssembleWith None the answers are written back to back."""
    record = b"x" * 300_000
    put(tmp_path, "in/records/big.txt", b"\n".join(record + b"%d" % n for n in range(5)))
    described = transform.run(_job(BatchStrategy="MultiRecord", MaxPayloadInMB=1))
    assert described["TransformJobStatus"] == "Completed", described.get("FailureReason")
    batches = [seen.body.split(b"\n") for seen in transform.container.seen]
    assert [len(batch) for batch in batches] == [3, 2]
    assert [line[-1:] for batch in batches for line in batch] == [b"0", b"1", b"2", b"3", b"4"]
    assert max(len(seen.body) for seen in transform.container.seen) <= 1024 * 1024
    written = (tmp_path / "s3" / "out" / "job-1" / "big.txt.out").read_bytes()
    assert written == b"".join(seen.body.upper() for seen in transform.container.seen)


def test_split_none_sends_each_file_whole(transform: Transform, tmp_path: Path) -> None:
    """SplitType None: each file is one record, lines and all."""
    put(tmp_path, "in/records/a.json", b'{"a": 1}\n{"a": 2}\n')
    described = transform.run(
        _job(BatchStrategy="SingleRecord", TransformInput={"SplitType": "None"})
    )
    assert described["TransformJobStatus"] == "Completed", described.get("FailureReason")
    assert [seen.body for seen in transform.container.seen] == [b'{"a": 1}\n{"a": 2}\n']


@pytest.mark.parametrize(
    ("requested", "expected_calls"),
    [({}, 3), ({"BatchStrategy": "MultiRecord"}, 1)],
    ids=["container-decides", "request-wins"],
)
def test_execution_parameters_fill_what_the_request_leaves_out(
    transform: Transform,
    tmp_path: Path,
    requested: dict[str, Any],
    expected_calls: int,
) -> None:
    """The container's /execution-parameters decide what the request does not say; what the
    request says wins."""
    transform.container.execution_parameters = {
        "BatchStrategy": "SINGLE_RECORD",
        "MaxConcurrentTransforms": 2,
    }
    put(tmp_path, "in/records/a.csv", b"1\n2\n3\n")
    described = transform.run(_job(**requested))
    assert described["TransformJobStatus"] == "Completed", described.get("FailureReason")
    assert len(transform.container.seen) == expected_calls


def test_calls_run_concurrently_up_to_max_concurrent_transforms(
    transform: Transform, tmp_path: Path
) -> None:
    """MaxConcurrentTransforms calls are in flight at once, and the output keeps input order."""
    in_flight, most = 0, 0
    lock = threading.Lock()

    def slow(seen: Seen) -> Reply:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        time.sleep(0.1 if seen.body == b"0" else 0.02)
        with lock:
            in_flight -= 1
        return Reply(seen.body)

    transform.container.handler = slow
    put(tmp_path, "in/records/a.csv", b"\n".join(b"%d" % n for n in range(12)))
    request = _job(
        BatchStrategy="SingleRecord",
        MaxConcurrentTransforms=3,
        TransformOutput={"AssembleWith": "Line"},
    )
    described = transform.run(request)
    assert described["TransformJobStatus"] == "Completed", described.get("FailureReason")
    assert most == 3
    written = (tmp_path / "s3" / "out" / "job-1" / "a.csv.out").read_bytes()
    assert written == b"".join(b"%d\n" % n for n in range(12))


@pytest.mark.parametrize(("stack", "app"), [("gunicorn", "wsgi"), ("uvicorn", "asgi")])
def test_the_container_process_gets_the_job_environment(
    tmp_path: Path, stack: str, app: str
) -> None:
    """With transform_container, each job starts its own gunicorn or uvicorn with the job's
    Environment and SageMaker's batch variables, and stops it when the job ends."""
    (tmp_path / "transform_app.py").write_text(_APP)
    containers = TransformContainers(stack, f"transform_app:{app}", tmp_path, cwd=tmp_path)
    with LocalRuntime({}, s3_root=tmp_path / "s3", transform_container=containers) as runtime:
        put(tmp_path, "in/records/a.csv", b"1\n2\n")
        request = _job(
            BatchStrategy="SingleRecord",
            MaxPayloadInMB=2,
            Environment={"JOB_MARK": "from-the-job"},
            TransformOutput={"AssembleWith": "Line"},
        )
        described = Transform(None, runtime, runtime_client(runtime.url, "sagemaker")).run(request)
        job = runtime.transform_job("job-1")
    [container] = containers.containers
    assert described["TransformJobStatus"] == "Completed", (described, container.output())
    assert described["Environment"] == {"JOB_MARK": "from-the-job"}
    expected = {
        "JOB_MARK": "from-the-job",
        "SAGEMAKER_BATCH": "true",
        "SAGEMAKER_BATCH_STRATEGY": "SINGLE_RECORD",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "2",
    }
    assert job.environment == expected
    lines = (tmp_path / "s3" / "out" / "job-1" / "a.csv.out").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"records": ["1"], **expected},
        {"records": ["2"], **expected},
    ]
    assert container.process.poll() is not None  # stopped when the job ended


def test_waiter_sees_the_job_complete(transform: Transform, tmp_path: Path) -> None:
    """botocore's own transform_job_completed_or_stopped waiter returns once the job is done."""
    put(tmp_path, "in/records/a.csv", b"1\n")
    transform.client.create_transform_job(**_job())
    waiter = transform.client.get_waiter("transform_job_completed_or_stopped")
    waiter.wait(TransformJobName="job-1", WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    assert transform.runtime.transform_job("job-1").status == "Completed"


def test_a_failing_container_fails_the_job_after_its_retries(
    transform: Transform, tmp_path: Path
) -> None:
    """A call the container keeps failing is tried 1 + InvocationsMaxRetries times, then the
    job is Failed with a reason that quotes nothing the container said."""
    transform.container.handler = lambda seen: Reply(b"secret model error", status=500)
    put(tmp_path, "in/records/a.csv", b"1\n")
    request = _job(ModelClientConfig={"InvocationsMaxRetries": 1, "InvocationsTimeoutInSeconds": 5})
    described = transform.run(request)
    assert described["TransformJobStatus"] == "Failed"
    assert "status 500" in described["FailureReason"]
    assert "secret" not in described["FailureReason"]
    assert len(transform.container.seen) == 2
    assert not (tmp_path / "s3" / "out" / "job-1").exists()


def test_no_input_fails_the_job(transform: Transform) -> None:
    """An input prefix with no file under it fails the job, as an empty S3 prefix does."""
    described = transform.run(_job())
    assert described["TransformJobStatus"] == "Failed"
    assert "no input file" in described["FailureReason"]
    assert transform.container.seen == []


def test_a_container_that_does_not_start_fails_the_job(tmp_path: Path) -> None:
    """A launcher that raises fails the job, saying the container did not start."""

    def broken(job: LocalTransformJob) -> Any:
        raise OSError("no such image")

    with LocalRuntime({}, s3_root=tmp_path / "s3", transform_container=broken) as runtime:
        put(tmp_path, "in/records/a.csv", b"1\n")
        described = Transform(None, runtime, runtime_client(runtime.url, "sagemaker")).run(_job())
    assert described["TransformJobStatus"] == "Failed"
    assert "did not start: no such image" in described["FailureReason"]


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"Environment": {f"V{n}": "x" for n in range(17)}}, "ValidationException"),
        ({"Environment": {"1BAD": "x"}}, "ValidationException"),
        ({"Environment": {"LONG": "x" * 10241}}, "ValidationException"),
        ({"BatchStrategy": "Everything"}, "ValidationException"),
        ({"TransformInput": {"SplitType": "RecordIO"}}, "ValidationException"),
        ({"TransformInput": {"CompressionType": "Gzip"}}, "ValidationException"),
        ({"TransformJobName": "bad_name"}, "ValidationException"),
        ({"TransformInput": {"DataSource": {"S3DataSource": _MANIFEST}}}, "ValidationException"),
    ],
    ids=[
        "17-variables",
        "bad-variable-name",
        "long-variable",
        "bad-strategy",
        "recordio",
        "gzip",
        "bad-job-name",
        "manifest",
    ],
)  # fmt: skip
def test_requests_sagemaker_refuses_are_refused(
    transform: Transform, params: dict[str, Any], code: str
) -> None:
    """What SageMaker (or this stand-in) cannot run is refused at create, before any call."""
    with pytest.raises(ClientError) as raised:
        transform.client.create_transform_job(**_job(**params))
    assert raised.value.response["Error"]["Code"] == code
    assert transform.container.seen == []


def test_names_are_unique_and_unknown_jobs_are_not_found(
    transform: Transform, tmp_path: Path
) -> None:
    """A second job of the same name is ResourceInUse; describing a job never created is
    ResourceNotFound, as botocore's modelled exceptions."""
    put(tmp_path, "in/records/a.csv", b"1\n")
    client = transform.client
    client.create_transform_job(**_job())
    with pytest.raises(client.exceptions.ResourceInUse):
        client.create_transform_job(**_job())
    with pytest.raises(client.exceptions.ResourceNotFound):
        client.describe_transform_job(TransformJobName="never")
    assert transform.runtime.wait_transform_jobs(30)


def test_unknown_model_of_a_mapping_is_refused() -> None:
    """With a mapping of containers, a ModelName not in it is refused."""
    with ModelContainer() as container, LocalRuntime({"model-a": container.url}) as runtime:
        sagemaker = runtime_client(runtime.url, "sagemaker")
        with pytest.raises(ClientError) as raised:
            sagemaker.create_transform_job(**_job(ModelName="model-b"))
    assert raised.value.response["Error"]["Code"] == "ValidationException"


def test_close_stops_a_running_job_and_joins_its_threads(tmp_path: Path) -> None:
    """Closing the runtime mid-job ends the job as Stopped and leaves no thread behind."""
    started = threading.Event()

    def stuck(seen: Seen) -> Reply:
        started.set()
        time.sleep(2)
        return Reply(seen.body)

    with ModelContainer() as container:
        container.handler = stuck
        runtime = LocalRuntime(container.url, s3_root=tmp_path / "s3").start()
        put(tmp_path, "in/records/a.csv", b"1\n2\n")
        runtime_client(runtime.url, "sagemaker").create_transform_job(**_job())
        assert started.wait(10)
        begun = time.monotonic()
        runtime.close()
        assert time.monotonic() - begun < 1.5
    assert runtime.transform_job("job-1").status == "Stopped"
    assert not [t for t in threading.enumerate() if t.name.startswith("sm-tracing-local")]
