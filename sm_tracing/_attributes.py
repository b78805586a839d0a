"""The names sm_tracing writes: the SageMaker headers it reads, and every span attribute and
metric it records, on either side. One home, so the client, the container and the tests spell
each name the same way."""

from __future__ import annotations

HEADER = "X-Amzn-SageMaker-Custom-Attributes"
HEADER_LOWER = HEADER.lower()
INFERENCE_ID_HEADER = "X-Amzn-SageMaker-Inference-Id"

# Shared by both sides.
STATUS_CODE = "http.response.status_code"
ERROR_TYPE = "error.type"
ENDPOINT_NAME = "aws.sagemaker.endpoint.name"
INFERENCE_ID = "aws.sagemaker.inference_id"
SESSION_ID = "aws.sagemaker.session_id"
TARGET_MODEL = "aws.sagemaker.target_model"

# The SageMaker headers that reach a container, and the span attribute each one becomes.
SAGEMAKER_HEADERS = (
    ("x-amzn-sagemaker-inference-id", INFERENCE_ID),
    ("x-amzn-sagemaker-target-model", TARGET_MODEL),
    ("x-amzn-sagemaker-session-id", SESSION_ID),
)


def environ_key(name: str) -> str:
    """The WSGI environ key of the request header *name*."""
    return "HTTP_" + name.upper().replace("-", "_")


SAGEMAKER_ENVIRON_KEYS = tuple(
    (environ_key(name), attribute) for name, attribute in SAGEMAKER_HEADERS
)
"""``SAGEMAKER_HEADERS`` with the WSGI environ key of each header."""

# The client's call: what the response says and what the container's echo adds.
INVOKED_VARIANT = "aws.sagemaker.invoked_production_variant"
CONTAINER_TRACE_ID = "aws.sagemaker.container.trace_id"
CONTAINER_SPAN_ID = "aws.sagemaker.container.span_id"
CONTAINER_DURATION = "aws.sagemaker.container.duration"
OVERHEAD = "aws.sagemaker.overhead.duration"
RPC_METHOD = "rpc.method"

# GenAI conventions, for the endpoints ``genai_models`` names.
GENAI_PROVIDER = "gen_ai.provider.name"
GENAI_OPERATION = "gen_ai.operation.name"
GENAI_MODEL = "gen_ai.request.model"

# Metrics, in seconds.
SERVER_DURATION = "http.server.request.duration"
INVOCATION_DURATION = "aws.sagemaker.container.invocation.duration"
# The HTTP server duration's bucket advice, from the semantic conventions.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)

# Where a client's calls go, and what they are.
RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
CLOUD_REGION = "cloud.region"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
REQUEST_ID = "aws.request_id"
ERROR_CODE = "aws.error.code"
ORIGINAL_STATUS_CODE = "aws.sagemaker.original_status_code"
TARGET_VARIANT = "aws.sagemaker.target_variant"
TARGET_CONTAINER_HOSTNAME = "aws.sagemaker.target_container_hostname"
INFERENCE_COMPONENT = "aws.sagemaker.inference_component"
PREFIX_AWARE_ID = "aws.sagemaker.prefix_aware_id"
OUTPUT_LOCATION = "aws.sagemaker.output_location"
FAILURE_LOCATION = "aws.sagemaker.failure_location"
JOB_NAME = "aws.sagemaker.transform_job.name"
INVOCATION_PATH = "aws.sagemaker.model_invocation_path"

# Streams, each way.
CHUNKS = "aws.sagemaker.stream.chunk_count"
REQUEST_CHUNKS = "aws.sagemaker.stream.request_chunk_count"
"""Request parts the caller sent; ``CHUNKS`` counts the response's."""
OUTCOME = "aws.sagemaker.stream.outcome"
TIME_TO_FIRST_CHUNK = "aws.sagemaker.stream.time_to_first_chunk"
TIME_PER_CHUNK = "aws.sagemaker.stream.time_per_chunk"
MESSAGES_RECEIVED = "aws.sagemaker.stream.messages_received"
MESSAGES_SENT = "aws.sagemaker.stream.messages_sent"

# The container's request.
HTTP_METHOD = "http.request.method"
HTTP_ROUTE = "http.route"
URL_PATH = "url.path"
HANDLER = "aws.sagemaker.handler"
EXCEPTION_TYPE = "exception.type"
EXCEPTION_MESSAGE = "exception.message"
