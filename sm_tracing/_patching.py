"""The one way sm_tracing patches another library's method or function, and undoes it.

A patch is a plain function that goes in as the innermost wrapper: just above the original,
under the wrapt proxies other tools put there (opentelemetry-instrumentation-botocore and the
X-Ray SDK wrap botocore's methods with wrapt). Their removal takes off the outermost proxy,
which is then always theirs, never ours; ours is spliced out of the chain wherever it sits, so
it never takes theirs either. The patch calls what it wraps through its own ``__wrapped__``,
read on each call, so splicing is repointing the wrapper above it. A wrapper another tool's
removal left bound to no instance can't be gone under (see ``_BOUND``): the patch goes on top
of it instead.

Post-import hooks go through one registration per module for the life of the process: wrapt's
registry keeps every hook it is given, so registering on each install would grow it forever.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import threading
from collections.abc import Callable
from types import FunctionType, ModuleType
from typing import Any

import wrapt

_logger = logging.getLogger(__name__)

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]
"""``wrapper(wrapped, instance, args, kwargs)``, as wrapt calls a wrapper: *wrapped* is bound to
*instance* for a method (None for a module's function), and *args* leave the instance out."""

_PATCH = "_sm_tracing_patch"
# wrapt 2 names the common base of its proxies and wrappers BaseObjectProxy; wrapt 1 has only
# ObjectProxy.
_PROXIES = (getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy),)
# A wrapper bound to no instance, left in a class by a tool that took off the wrapper around it
# with ``setattr(cls, name, getattr(cls, name).__wrapped__)`` (opentelemetry's and ddtrace's
# ``unwrap`` do). Each call binds afresh through the wrapper it was bound from, not through its
# own ``__wrapped__``: repointing that would change nothing a call reaches.
_BOUND = (wrapt.BoundFunctionWrapper,)


class Patch:
    """One patch of ``owner.name``: while *active*, calls go through *wrapper*; afterwards
    straight to what it wraps, wherever it still sits."""

    __slots__ = ("active", "function", "name", "over_bound", "owner")

    def __init__(
        self, owner: type | ModuleType, name: str, function: Any, over_bound: bool
    ) -> None:
        self.owner = owner
        self.name = name
        self.function = function
        self.active = True
        self.over_bound = over_bound
        """Whether it went on top of a bound wrapper (see ``_BOUND``), and so above whatever
        that wrapper calls."""

    def installed(self) -> bool:
        """Whether calls of ``owner.name`` still reach this patch. False when the chain of
        wrappers leads to the owner's own function without passing it (another tool put back a
        method it had saved from before ours); True where a wrapper that hides what it wraps
        sits on top, since what is under it can't be seen."""
        node = self.owner.__dict__.get(self.name)
        while True:
            if node is self.function:
                return True
            inner = getattr(node, "__wrapped__", None)
            if inner is None:
                return getattr(node, "__module__", None) != self.owner.__module__
            node = inner


def patch(owner: type | ModuleType, name: str, wrapper: Wrapper) -> Patch:
    """Put a patch calling *wrapper* around ``owner.name`` (defined on *owner* itself: a method
    of a class or a function of a module), under the wrappers already there that can be
    repointed, keeping its signature; a coroutine function gets a coroutine function."""
    parent: Any = None
    original = owner.__dict__[name]
    while _repointable(original):
        parent, original = original, original.__wrapped__
    method = isinstance(owner, type)
    handle: Patch
    function: Any

    def call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        wrapped: Any = function.__wrapped__
        if method:
            # The instance may come by name: the signature shown is the original's.
            if args:
                instance, args = args[0], args[1:]
            else:
                instance = kwargs.pop("self")
            wrapped = wrapped.__get__(instance, type(instance))
        else:
            instance = None
        if not handle.active:
            return wrapped(*args, **kwargs)
        return wrapper(wrapped, instance, args, kwargs)

    if inspect.iscoroutinefunction(original):

        async def patched_async(*args: Any, **kwargs: Any) -> Any:
            return await call(args, kwargs)

        function = patched_async
    else:

        def patched(*args: Any, **kwargs: Any) -> Any:
            return call(args, kwargs)

        function = patched
    functools.update_wrapper(function, original, updated=())
    handle = Patch(owner, name, function, isinstance(original, _BOUND))
    setattr(function, _PATCH, handle)
    if not _repoint(owner, name, parent, function):
        # A proxy that can't be repointed: on top of everything instead.
        function.__wrapped__ = owner.__dict__[name]
        setattr(owner, name, function)
    return handle


def _repointable(node: object) -> bool:
    """Whether calls through *node* reach what its ``__wrapped__`` says, read on each call, so
    that another function can be put there: a patch of ours or a wrapt proxy, but not a bound
    wrapper (see ``_BOUND``)."""
    if isinstance(node, _PROXIES):
        return not isinstance(node, _BOUND)
    return patch_of(node) is not None


def _repoint(owner: type | ModuleType, name: str, parent: Any, target: Any) -> bool:
    """Make *target* what *parent* wraps (``owner.name`` itself for None); False when it can't
    be repointed."""
    if parent is not None and not _repointable(parent):
        return False
    try:
        if parent is None:
            setattr(owner, name, target)
        else:
            parent.__wrapped__ = target
    except (AttributeError, TypeError):
        return False
    return True


def unpatch(handle: Patch) -> None:
    """Take *handle*'s patch out of the chain of ``owner.name``, wherever it sits: the wrapper
    above it is pointed at what it wrapped. Where that can't be done (a wrapper that can't be
    repointed sits above) the patch stays, inactive, passing every call straight through."""
    handle.active = False
    owner, name = handle.owner, handle.name
    parent: Any = None
    node: Any = owner.__dict__.get(name)
    while node is not None:
        if node is handle.function:
            if not _repoint(owner, name, parent, node.__wrapped__):
                _logger.debug("left an inactive patch in %s.%s", owner.__name__, name)
            return
        parent, node = node, getattr(node, "__wrapped__", None)


def patch_of(function: object) -> Patch | None:
    """The patch *function* is, or None: a proxy around a patch (which shows the patch's
    attributes as its own) is not one."""
    if type(function) is not FunctionType:
        return None
    handle = getattr(function, _PATCH, None)
    return handle if isinstance(handle, Patch) else None


_import_lock = threading.Lock()


def _new_lock_in_child() -> None:
    # A fork while another thread held the lock leaves the child's copy held forever.
    global _import_lock  # noqa: PLW0603 - replaced whole, in the only thread the child has
    _import_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_child)
_on_import: dict[str, dict[str, Callable[[ModuleType], None]]] = {}


def when_imported(module: str, key: str, callback: Callable[[ModuleType], None] | None) -> None:
    """Call *callback* with *module* once it is imported, now if it already is; None removes
    the callback registered under *key*. One callback per key: a new one replaces the old."""
    with _import_lock:
        callbacks = _on_import.get(module)
        if callbacks is None:
            callbacks = _on_import[module] = {}
            first = True
        else:
            first = False
        if callback is None:
            callbacks.pop(key, None)
            return
        callbacks[key] = callback
    if first:
        wrapt.register_post_import_hook(functools.partial(_imported, module), module)
    elif module in sys.modules:
        callback(sys.modules[module])


def _imported(name: str, module: ModuleType) -> None:
    with _import_lock:
        callbacks = list(_on_import.get(name, {}).values())
    for callback in callbacks:
        callback(module)
