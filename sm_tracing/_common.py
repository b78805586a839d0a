"""The current context, span kinds and method wrappers as the client hook used them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar, Token
from types import FunctionType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from sm_tracing._guard import failed

_logger = logging.getLogger("sm_tracing")

CLIENT, SERVER, INTERNAL = SpanKind.CLIENT, SpanKind.SERVER, SpanKind.INTERNAL
_DEFERRED_METER_PROVIDER = ("opentelemetry.metrics._internal", "_ProxyMeterProvider")


def _context_variable() -> ContextVar[Context] | None:
    """The ContextVar in which OpenTelemetry's default runtime context keeps the current
    context; None under another runtime context (``OTEL_PYTHON_CONTEXT``)."""
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    variable = getattr(runtime, "_current_context", None)
    if type(runtime).__name__ == "ContextVarsRuntimeContext" and isinstance(variable, ContextVar):
        return variable
    return None


# The current context, as OpenTelemetry's context API keeps it: read and set in its ContextVar
# where the default runtime context keeps it there. The API's functions go two calls deep for
# each step, and these run on every call of a client and every request of a container.
_CURRENT = _context_variable()
current_context: Callable[[], Context] = (
    otel_context.get_current if _CURRENT is None else _CURRENT.get
)
"""The current context: ``opentelemetry.context.get_current()``."""
attach_context: Callable[[Context], Token[Context]] = (
    otel_context.attach if _CURRENT is None else _CURRENT.set
)
"""Make *context* current: ``opentelemetry.context.attach()``."""
_reset: Callable[[Token[Context]], None] = (
    otel_context.detach if _CURRENT is None else _CURRENT.reset
)


def detach_context(token: Token[Context]) -> None:
    """Make current again what *token*'s ``attach`` replaced, as
    ``opentelemetry.context.detach()`` does: a token that can't be used (made in another
    context, or used already) is logged and goes no further."""
    try:
        _reset(token)
    except Exception as error:
        failed("make the earlier context current again", error)


# A method wrapper of ours that is a plain function (see ``ClientHook.method``) names its hook
# in the first attribute, and takes in the second a new method to call in place of its own.
HOOK_ATTRIBUTE = "_sm_tracing_hook"
REWIRE_ATTRIBUTE = "_sm_tracing_rewire"


def method_caller(method: Any) -> Callable[..., Any]:
    """A function that calls *method*, as found in a class's ``__dict__``, as a method of its
    first argument: *method* itself when it is a plain function, else bound through its
    descriptor on every call (another instrumentation's wrapt wrapper, say)."""
    # Not isinstance(): a wrapt wrapper passes for the function it wraps.
    if type(method) is FunctionType:
        return method

    def call(instance: Any, *args: Any, **kwargs: Any) -> Any:
        return method.__get__(instance, type(instance))(*args, **kwargs)

    return call


def unwrap(owner: Any, name: str, wrapper: object) -> None:
    """Take *wrapper* out of ``owner.name``, wherever it sits in the chain: a wrapt wrapper
    whose wrapper function is *wrapper*, or a plain-function wrapper of ours whose hook is.

    Another instrumentation may have wrapped on top of ours; removing the outermost wrapper,
    as a plain unwrap does, would take theirs away instead. Where ours can't be spliced out it
    stays, and its hook, disabled, passes every call straight through.
    """
    import wrapt  # only ever needed to undo what was wrapped, so never at import

    # wrapt 2 names the common base of its proxies and wrappers BaseObjectProxy; wrapt 1 has
    # only ObjectProxy.
    proxy_types = (getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy),)
    parent: Any = None
    node: Any = owner.__dict__.get(name)
    while True:
        if isinstance(node, proxy_types):
            mine = getattr(node, "_self_wrapper", None) == wrapper
        elif callable(getattr(node, REWIRE_ATTRIBUTE, None)):
            mine = getattr(node, HOOK_ATTRIBUTE, None) is wrapper
        else:
            return  # the end of the chain, or a wrapper nobody can see through
        if mine:
            inner = node.__wrapped__
            try:
                if parent is None:  # ours is the outermost wrapper
                    setattr(owner, name, inner)
                elif isinstance(parent, proxy_types):
                    parent.__wrapped__ = inner
                else:
                    getattr(parent, REWIRE_ATTRIBUTE)(inner)
            except Exception:
                _logger.debug("left a disabled wrapper on %s.%s", owner.__name__, name)
            return
        parent, node = node, getattr(node, "__wrapped__", None)
