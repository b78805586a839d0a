"""Installing the bidirectional-stream hook: lazy (the SDK is never imported for it), under
either name the SDK's client class has had, and undone without a trace. Runs on every Python:
the SDK's module is stood in for by one of the same shape."""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from sm_tracing import _patching
from sm_tracing.client import _bidi
from sm_tracing.client._options import ClientOptions


def sdk_module(class_name: str) -> types.ModuleType:
    """A module shaped like the SDK's client module, its client class named *class_name*."""
    module = types.ModuleType(_bidi.MODULE)

    async def invoke_endpoint_with_bidirectional_stream(
        self: Any, input: Any, plugins: Any = None
    ) -> Any:
        return input

    client = type(class_name, (), {_bidi.METHOD: invoke_endpoint_with_bidirectional_stream})
    client.__module__ = module.__name__
    module.__dict__[class_name] = client
    module.__dict__["Helper"] = type("Helper", (), {})  # not a client: left alone
    return module


@pytest.fixture
def hook(tracer_provider: TracerProvider) -> Iterator[_bidi.BidiHook]:
    hook = _bidi.BidiHook(ClientOptions(tracer_provider=tracer_provider))
    yield hook
    hook.enabled = False


@pytest.mark.parametrize(
    "class_name", ["SageMakerRuntimeHTTP2Client", "AsyncSageMakerRuntimeHTTP2Client"]
)
def test_the_client_class_is_found_under_either_name(
    hook: _bidi.BidiHook, class_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK's client class is wrapped whether it has its old name or its new one, and
    uninstalling puts the SDK's own method back."""
    module = sdk_module(class_name)
    client = module.__dict__[class_name]
    original = client.__dict__[_bidi.METHOD]
    monkeypatch.setitem(sys.modules, _bidi.MODULE, module)

    _bidi._patch_module(hook, module)

    assert _bidi._client_classes(module) == [client]
    patched = client.__dict__[_bidi.METHOD]
    assert patched is not original
    assert _patching.patch_of(patched) in hook.patches
    _bidi.uninstall(hook)
    assert client.__dict__[_bidi.METHOD] is original


def test_an_uninstalled_hook_wraps_nothing_when_the_sdk_comes_later(
    hook: _bidi.BidiHook,
) -> None:
    """The import hook of an uninstalled hook stays registered (Python has no way to take it
    back) and does nothing when the SDK is imported afterwards."""
    module = sdk_module("AsyncSageMakerRuntimeHTTP2Client")
    original = module.AsyncSageMakerRuntimeHTTP2Client.__dict__[_bidi.METHOD]
    _bidi.uninstall(hook)
    _bidi._patch_module(hook, module)
    assert module.AsyncSageMakerRuntimeHTTP2Client.__dict__[_bidi.METHOD] is original


def test_installing_does_not_import_the_sdk() -> None:
    """install() registers an import hook and nothing else: the SDK (and its CRT) are loaded
    only by an application that uses them."""
    script = (
        "import sys\n"
        "from sm_tracing.client import _bidi\n"
        "from sm_tracing.client._options import ClientOptions\n"
        "_bidi.install(ClientOptions())\n"
        "print(sorted(m for m in sys.modules if m.startswith(('aws_sdk', 'smithy', 'awscrt'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
