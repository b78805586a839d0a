"""A local SageMaker runtime: the InvokeEndpoint API on loopback, in front of a model container.

:class:`LocalRuntime` behaves like the SageMaker front door where tracing can tell the
difference: only the headers SageMaker forwards reach the container (a ``traceparent`` HTTP
header does not), CustomAttributes pass both ways verbatim, container failures come back as
``ModelError`` (424), InvokeEndpointWithResponseStream is a real AWS event stream relayed as
the container produces it, and InvokeEndpointAsync (input from an ``InputLocation`` or an inline
``Body``, output named by ``S3OutputPathExtension`` and ``Filename``) answers 202 and runs in
the background, writing the result under an output location. Members beyond the limits of the
API model (CustomAttributes over 1024 characters, a ``PrefixAwareId`` over 64, an inline async
body over 128,000 bytes...) are refused with ``ValidationError``, as SageMaker refuses them.
Requests without a SigV4 ``Authorization`` header are refused; signatures are not verified, so
any credentials will do.

The same URL serves batch transform to a ``sagemaker`` client (CreateTransformJob and
DescribeTransformJob): records read from files go to the model container once per record or
mini-batch, the answers are written as ``<input>.out``, and the container process can be
started with the job's ``Environment``, as SageMaker starts it (:class:`LocalTransformJob`).

Standard library only, so it works without any optional extra::

    with LocalRuntime("http://127.0.0.1:8080") as runtime:
        client = boto3.client("sagemaker-runtime", endpoint_url=runtime.url, ...)
        client.invoke_endpoint(EndpointName="any", Body=b"{}")

From a shell, ``sm-tracing local --container URL`` runs one on a port for any client on the
machine, printing the variables that send a client there and a line per call.

:class:`LocalBidiRuntime` does the same for InvokeEndpointWithBidirectionalStream (HTTP/2 over
TLS) in front of a WebSocket container; it needs the ``test`` extra's h2, websockets and
trustme.
"""

from sm_tracing.local._bidi import LocalBidiRuntime
from sm_tracing.local._runtime import LocalRuntime
from sm_tracing.local._transform import LocalTransformJob

__all__ = ["LocalBidiRuntime", "LocalRuntime", "LocalTransformJob"]
