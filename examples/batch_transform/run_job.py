"""Run a traced batch transform job on this machine, and print its outputs and the trace.

    pip install 'sm-tracing[flask]' gunicorn
    python run_job.py '1,2,3' '4,5,6' '7,8,9'

With ``sm_tracing.instrument(transform_jobs=True)``, CreateTransformJob gets a CLIENT span,
and its trace context goes into the job's ``Environment`` (``TRACEPARENT`` ...), after your own
variables. ``sm_tracing.local.LocalRuntime`` plays SageMaker: it serves CreateTransformJob and
DescribeTransformJob to a real boto3 ``sagemaker`` client, starts the model container
(``app.py`` under gunicorn) with the job's environment, sends it each record read from the
input files and writes its answers as ``<input>.out``. ``s3://`` URIs are folders under a
temporary directory. Spans go to OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4318,
e.g. the Jaeger of examples/jaeger), the container's as ``transform-model``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import boto3
from botocore.exceptions import WaiterError
from opentelemetry import trace

import sm_tracing
from sm_tracing.local import LocalRuntime, LocalTransformJob

HERE = Path(__file__).resolve().parent
JOB = "traced-transform"


@contextlib.contextmanager
def model_container(job: LocalTransformJob) -> Iterator[str]:
    """Start the job's model container as SageMaker does, with the job's environment: here
    app.py under gunicorn on a free loopback port. Yields its URL; stopped when the job ends."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "app:app"],
        cwd=HERE,
        env={**os.environ, **job.environment},
    )
    try:
        yield f"http://127.0.0.1:{port}"  # the runtime waits for its /ping
    finally:
        process.terminate()  # gunicorn stops gracefully; the workers flush their spans
        process.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="*", default=["1,2,3", "4,5,6", "7,8,9"])
    parser.add_argument("--jaeger-url", default="http://localhost:16686")
    args = parser.parse_args(argv)

    provider = sm_tracing.configure("transform-client")
    sm_tracing.instrument(transform_jobs=True)  # off by default: it changes the job's definition

    with (
        tempfile.TemporaryDirectory() as s3_root,
        LocalRuntime({}, s3_root=s3_root, transform_container=model_container) as runtime,
    ):
        # s3://my-bucket/input/records.csv, one record a line.
        source = Path(s3_root, "my-bucket", "input", "records.csv")
        source.parent.mkdir(parents=True)
        source.write_text("\n".join(args.records) + "\n")

        client = boto3.client(
            "sagemaker",
            endpoint_url=runtime.url,
            region_name="us-east-1",
            aws_access_key_id="local",  # any credentials: the request is signed, not checked
            aws_secret_access_key="local",
        )
        tracer = trace.get_tracer(__name__)
        with tracer.start_as_current_span("run_job.py") as span:
            client.create_transform_job(
                TransformJobName=JOB,
                ModelName="my-model",
                BatchStrategy="SingleRecord",
                # Your own variables stay as they are; the trace context comes after them.
                Environment={"OTEL_SERVICE_NAME": "transform-model"},
                TransformInput={
                    "DataSource": {
                        "S3DataSource": {
                            "S3DataType": "S3Prefix",
                            "S3Uri": "s3://my-bucket/input/",
                        }
                    },
                    "ContentType": "text/csv",
                    "SplitType": "Line",
                },
                TransformOutput={
                    "S3OutputPath": "s3://my-bucket/output/",
                    "Accept": "text/csv",
                    "AssembleWith": "Line",
                },
                TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
            )
            trace_id = f"{span.get_span_context().trace_id:032x}"
        with contextlib.suppress(WaiterError):  # a failed job: its reason is printed below
            client.get_waiter("transform_job_completed_or_stopped").wait(
                TransformJobName=JOB, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
            )
        job = client.describe_transform_job(TransformJobName=JOB)
        print(f"{JOB}: {job['TransformJobStatus']}")
        print(f"Environment: {job['Environment']}")
        if job["TransformJobStatus"] != "Completed":
            print(job.get("FailureReason", ""), file=sys.stderr)
            return 1
        output = Path(s3_root, "my-bucket", "output", "records.csv.out")
        print(output.read_text(), end="")

    provider.force_flush()
    print(f"trace {trace_id}: {args.jaeger_url.rstrip('/')}/trace/{trace_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
