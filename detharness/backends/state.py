"""The global switches a variant can change that change later variants' numbers, read and restored.

Variants of one backend share a worker process, so a variant that calls ``torch.set_default_dtype``,
``np.seterr``, ``jax.config.update("jax_enable_x64", False)`` or ``torch.set_num_threads`` would
change every variant after it, while the bundle still records the start-up values. The runner
takes a :func:`snapshot` before each variant and :func:`restore` s it after; what the variant
changed is recorded with it.

Only frameworks already imported are read (``sys.modules``): nothing here imports one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Switch:
    """One global setting: its key in a variant's record, how to read it and how to set it back."""

    key: str
    module: str
    read: Callable[[Any], Any]
    write: Callable[[Any, Any], None]


def _numpy_printoptions(np: Any) -> Any:
    return dict(np.get_printoptions())


def _torch_deterministic(torch: Any) -> Any:
    return (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())


def _set_torch_deterministic(torch: Any, value: Any) -> None:
    torch.use_deterministic_algorithms(value[0], warn_only=value[1])


def _attribute(path: str) -> tuple[Callable[[Any], Any], Callable[[Any, Any], None]]:
    """Read and write ``module.a.b.c`` as an attribute path."""
    *parents, name = path.split(".")

    def owner(module: Any) -> Any:
        for part in parents:
            module = getattr(module, part)
        return module

    return (lambda module: getattr(owner(module), name)), (lambda module, value: setattr(owner(module), name, value))


def _jax_config(name: str) -> tuple[Callable[[Any], Any], Callable[[Any, Any], None]]:
    return (lambda jax: getattr(jax.config, name)), (lambda jax, value: jax.config.update(name, value))


SWITCHES: tuple[Switch, ...] = (
    Switch("numpy.printoptions", "numpy", _numpy_printoptions, lambda np, value: np.set_printoptions(**value)),
    Switch("numpy.errstate", "numpy", lambda np: dict(np.geterr()), lambda np, value: np.seterr(**value)),
    Switch("torch.default_dtype", "torch", lambda t: t.get_default_dtype(), lambda t, v: t.set_default_dtype(v)),
    Switch("torch.default_device", "torch", lambda t: t.get_default_device(), lambda t, v: t.set_default_device(v)),
    Switch("torch.num_threads", "torch", lambda t: t.get_num_threads(), lambda t, v: t.set_num_threads(v)),
    Switch("torch.deterministic_algorithms", "torch", _torch_deterministic, _set_torch_deterministic),
    Switch("torch.float32_matmul_precision", "torch", lambda t: t.get_float32_matmul_precision(),
           lambda t, v: t.set_float32_matmul_precision(v)),
    Switch("torch.cuda.matmul.allow_tf32", "torch", *_attribute("backends.cuda.matmul.allow_tf32")),
    Switch("torch.cudnn.allow_tf32", "torch", *_attribute("backends.cudnn.allow_tf32")),
    Switch("torch.cudnn.deterministic", "torch", *_attribute("backends.cudnn.deterministic")),
    Switch("torch.cudnn.benchmark", "torch", *_attribute("backends.cudnn.benchmark")),
    Switch("jax.enable_x64", "jax", *_jax_config("jax_enable_x64")),
    Switch("jax.default_matmul_precision", "jax", *_jax_config("jax_default_matmul_precision")),
    Switch("jax.threefry_partitionable", "jax", *_jax_config("jax_threefry_partitionable")),
    Switch("jax.default_prng_impl", "jax", *_jax_config("jax_default_prng_impl")),
)

Snapshot = dict[str, Any]


def snapshot(switches: tuple[Switch, ...] = SWITCHES) -> Snapshot:
    """The value of every switch whose framework is imported (one that cannot be read is left out)."""
    values: Snapshot = {}
    for switch in switches:
        module = sys.modules.get(switch.module)
        if module is None:
            continue
        try:
            values[switch.key] = switch.read(module)
        except Exception:  # an older or newer framework without this switch
            continue
    return values


def restore(before: Snapshot, switches: tuple[Switch, ...] = SWITCHES) -> dict[str, list[str]]:
    """Set every switch back to its value in ``before``; return what had changed, ``key -> [before,
    after]`` as text (including a framework the variant imported and set: its switches are left)."""
    changed: dict[str, list[str]] = {}
    now = snapshot(switches)
    for switch in switches:
        if switch.key not in before or switch.key not in now or now[switch.key] == before[switch.key]:
            continue
        changed[switch.key] = [str(before[switch.key]), str(now[switch.key])]
        module = sys.modules.get(switch.module)
        try:
            switch.write(module, before[switch.key])
        except Exception as exc:
            changed[switch.key].append(f"could not be restored: {type(exc).__name__}: {exc}")
    return changed
