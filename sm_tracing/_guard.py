"""The guard that keeps a failure of sm_tracing's out of the user's call."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

_logger = logging.getLogger("sm_tracing")

T = TypeVar("T")


def guard(what: str, default: T, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)``, or *default* when it raises: the failure is logged as "could not
    *what*" and goes no further. Every entry point that must never break the user's call goes
    through it."""
    try:
        return function(*args)
    except Exception as error:
        failed(what, error)
        return default


def failed(what: str, error: Exception) -> None:
    """Log *error* as "could not *what*"."""
    _logger.warning("could not %s", what, exc_info=error)
