"""What the local runtime tells its owner about each invocation it served."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

OPERATIONS = {
    "invocations": "InvokeEndpoint",
    "invocations-response-stream": "InvokeEndpointWithResponseStream",
    "async-invocations": "InvokeEndpointAsync",
}


@dataclass(frozen=True)
class Call:
    """One invocation as the local runtime saw it.

    For InvokeEndpointAsync, a call is reported when the container has answered and the result
    is written (the caller's 202 is not reported), or when the request is refused.
    """

    operation: str
    endpoint: str
    status: int  # the caller's answer; for an async call run, the container's status
    seconds: float  # to the answer's end (a stream's last event; an async result written)
    sent: str | None  # the caller's CustomAttributes, forwarded to the container as they came
    answered: str | None  # the CustomAttributes the container answered with
    error: str | None = None  # the error code the caller got, or why an async call failed
    output: str | None = None  # an async call's result (or failure) file


Observer = Callable[[Call], None]
