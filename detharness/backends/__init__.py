"""Backends: numpy, torch, onnxruntime and jax, and a registry that others can join.

Importing this package imports no framework: the registered objects are cheap, and each imports
its framework in :meth:`Backend.load`, inside the worker that runs it::

    from detharness.backends import VariantSpec, get_backend, load_backend
    get_backend("torch").info()                   # no import of torch
    backend, hello = load_backend("torch", False)  # imports torch, reads switches and fingerprint
    call = backend.prepare(fn, VariantSpec(device="cpu", dtype="float32", mode="eager"), inputs)
"""

from __future__ import annotations

import sys
from typing import Any

from detharness.backends.base import (
    DEVICE_KINDS,
    Backend,
    BackendInfo,
    UnsupportedVariant,
    VariantSpec,
    jsonable,
    split_device,
)
from detharness.backends.jax_backend import JaxBackend
from detharness.backends.numpy_backend import NumpyBackend
from detharness.backends.onnx_model import load_model_safely
from detharness.backends.onnxruntime_backend import OnnxRuntimeBackend
from detharness.backends.torch_backend import TorchBackend
from detharness.errors import BackendError

__all__ = [
    "BACKENDS",
    "DEVICE_KINDS",
    "Backend",
    "BackendInfo",
    "JaxBackend",
    "NumpyBackend",
    "OnnxRuntimeBackend",
    "TorchBackend",
    "UnsupportedVariant",
    "VariantSpec",
    "available_backends",
    "get_backend",
    "load_backend",
    "load_model_safely",
    "register_backend",
    "split_device",
]

#: Every known backend by name, in registration order. Read it; add with :func:`register_backend`.
BACKENDS: dict[str, Backend] = {}

# Where each backend was registered, so that a duplicate name can point at both places.
_REGISTERED_AT: dict[str, str] = {}


def register_backend(backend: Backend, *, replace: bool = False) -> Backend:
    """Add ``backend`` under ``backend.name``; a name already taken is an error unless ``replace``.

    Returns the backend, so a module can write ``MY = register_backend(MyBackend())``.
    """
    if not isinstance(backend, Backend):
        raise TypeError(f"register_backend takes a Backend instance, not {type(backend).__name__}")
    name = backend.name
    if not name or any(c in name for c in ":[] "):
        raise BackendError(f"backend name {name!r} must be non-empty and hold no ':', '[', ']' or space")
    caller = sys._getframe(1)
    here = f"{caller.f_code.co_filename}:{caller.f_lineno}"
    if name in BACKENDS and not replace:
        raise BackendError(
            f"backend {name!r} is registered twice: {type(BACKENDS[name]).__name__} at {_REGISTERED_AT[name]} "
            f"and {type(backend).__name__} at {here} (pass replace=True to override)"
        )
    BACKENDS[name] = backend
    _REGISTERED_AT[name] = here
    return backend


def get_backend(name: str, *, require_installed: bool = False) -> Backend:
    """The backend called ``name``; :class:`BackendError` if unknown (or, if asked, not installed)."""
    try:
        backend = BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}") from None
    if require_installed and not backend.is_installed():
        raise BackendError(f"backend {name!r} is not installed; install it with: {backend.install_hint}")
    return backend


def load_backend(name: str, deterministic: bool) -> tuple[Backend, dict[str, Any]]:
    """Set a backend's switches, import its framework, and read its devices and fingerprint.

    The switches come first (:meth:`Backend.apply_switches`): some are environment variables the
    framework reads once when it starts (jax's ``XLA_FLAGS``). Returns the loaded backend and
    ``{"devices": [...], "fingerprint": {...}}``, the fingerprint holding the switches in force
    under flat dotted keys (a key without a dot gets the backend's name as prefix). Raises
    :class:`BackendError` for an unknown or uninstalled backend.
    """
    backend = get_backend(name)
    switches = backend.apply_switches(deterministic)
    backend.load()
    switches = {**switches, **backend.apply_switches(deterministic)}
    fingerprint = dict(backend.fingerprint())
    for key, value in switches.items():
        fingerprint[key if "." in key else f"{name}.{key}"] = value
    # Plain JSON values: the hello a worker sends is unpickled by the parent, which must not import
    # the framework to read it (torch.__version__ is a TorchVersion: reading it imported all of torch).
    return backend, {"devices": [str(d) for d in backend.devices()], "fingerprint": jsonable(fingerprint)}


def available_backends() -> list[str]:
    """The names of the registered backends whose framework is installed here (no import)."""
    return [name for name, backend in BACKENDS.items() if backend.is_installed()]


for _builtin in (NumpyBackend(), TorchBackend(), OnnxRuntimeBackend(), JaxBackend()):
    register_backend(_builtin)
del _builtin
