"""jax: ``jit`` (compiled ahead of the timed call) and ``eager`` (op by op), on CPU and CUDA.

A plain implementation takes jax arrays; a module builder returns a callable (closing over the
parameters it was built from). float64 is enabled (``jax_enable_x64``) when the backend loads, so a
float64 variant really computes in float64 instead of being silently truncated to float32.

Order: :meth:`JaxBackend.apply_switches` must run before anything starts jax's XLA backend.
``XLA_FLAGS`` is read once, when the backend starts (the first ``jax.devices()`` or array), not
when jax is imported; ``apply_switches(deterministic=True)`` sets ``--xla_gpu_deterministic_ops``
there, then loads jax. Asked for after the backend started without that flag, it raises
:class:`BackendError` rather than record a switch that is not in force.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from detharness.backends.base import Backend, VariantSpec, split_device
from detharness.errors import BackendError

if TYPE_CHECKING:
    import jax

_DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops"


def _backend_started() -> bool:
    """Whether jax's XLA backends were already created in this process (XLA_FLAGS then read)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        # A jax without that private helper: assume started, so a flag is never falsely recorded.
        return True


def _config(name: str) -> Any:
    """A jax config value by name (the attributes are dynamic, so typed access goes through here).

    ``jax.config.read`` refuses flags that also have a context manager (the matmul precision),
    so the attribute is read instead.
    """
    import jax

    return getattr(jax.config, name)


def _set_config(name: str, value: Any) -> None:
    import jax

    jax.config.update(name, value)  # type: ignore[no-untyped-call]


def _flag_value(flags: str, name: str) -> str | None:
    """The value of ``--name=value`` in an XLA_FLAGS string (the last one wins, as for XLA)."""
    value = None
    for token in flags.split():
        key, _, given = token.partition("=")
        if key == name:
            value = given or "true"
    return value


class JaxBackend(Backend):
    """jax arrays on ``cpu`` and ``cuda`` (jax's CUDA "gpu" platform, when it has devices)."""

    name = "jax"
    import_name = "jax"
    requires = ("jaxlib",)
    distributions = ("jax",)
    install_hint = 'pip install "detharness[jax]" -c ci/pins/cpu.txt'
    modes = ("jit", "eager")
    default_modes = ("jit",)

    def __init__(self) -> None:
        super().__init__()
        # XLA_FLAGS as the XLA backend saw it when it started; None while unknown.
        self._xla_flags_at_start: str | None = None
        # Whether jax's persistent compilation cache is pointed into detharness's; None: not set yet.
        self._compile_cache: bool | None = None

    # -- switches and loading -------------------------------------------------------------------

    #: jax takes 75% of a GPU's memory when it starts, and a run has several processes on one GPU (the
    #: torch worker beside this one, a backend split across workers, pytest-xdist workers): on an H200,
    #: ci/gpu-check.sh's jax variants failed with CUDA_ERROR_OUT_OF_MEMORY loading their first kernel,
    #: and none did with this setting. Memory taken as needed changes no result, and the variable is
    #: not part of the environment id.
    worker_environment: ClassVar[Mapping[str, str]] = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}

    def _set_environment(self, deterministic: bool) -> None:
        if not deterministic:
            return
        flags = os.environ.get("XLA_FLAGS", "")
        if _flag_value(flags, _DETERMINISTIC_FLAG) == "true":
            return
        if _backend_started():
            raise BackendError(
                "jax's XLA backend already started without --xla_gpu_deterministic_ops; "
                "call apply_switches(deterministic=True) before anything uses jax"
            )
        others = [t for t in flags.split() if t.partition("=")[0] != _DETERMINISTIC_FLAG]
        os.environ["XLA_FLAGS"] = " ".join([*others, f"{_DETERMINISTIC_FLAG}=true"])

    def _load_framework(self) -> None:
        import jax

        # Enabled for every variant so a float64 variant is float64; recorded in the switches.
        _set_config("jax_enable_x64", True)
        if not _backend_started():
            self._xla_flags_at_start = os.environ.get("XLA_FLAGS", "")
        jax.devices()  # start the backend now, with the flags just recorded
        self._configure_compile_cache()

    def _configure_compile_cache(self) -> str:
        """Point jax's persistent compilation cache into detharness's cache folder (``jax/``) when
        the cache is on, and turn it off when it is off; ``"on"`` or ``"off"`` as now set.

        ``jax_persistent_cache_min_compile_time_secs`` is 0: its 1 s default would skip the small
        programs most cases compile. jax reads the folder when it first compiles, so a change (an
        in-process run with another setting) also resets jax's cache state.
        """
        from detharness import cache

        on = cache.enabled()
        if self._compile_cache != on:
            if on:
                _set_config("jax_compilation_cache_dir", str(cache.jax_folder()))
                _set_config("jax_persistent_cache_min_compile_time_secs", 0.0)
                _set_config("jax_compilation_cache_max_size", cache.max_bytes())  # jax evicts LRU too
            _set_config("jax_enable_compilation_cache", on)
            try:
                from jax._src import compilation_cache

                compilation_cache.reset_cache()
            except (ImportError, AttributeError):  # a jax without it reads the settings on first use
                pass
            self._compile_cache = on
        return "on" if on else "off"

    def _set_deterministic(self) -> None:
        _set_config("jax_default_matmul_precision", "highest")

    def _read_switches(self) -> dict[str, Any]:
        flags = self._xla_flags_at_start
        deterministic_ops = None if flags is None else _flag_value(flags, _DETERMINISTIC_FLAG) == "true"
        return {
            "jax.enable_x64": bool(_config("jax_enable_x64")),
            "jax.default_matmul_precision": _config("jax_default_matmul_precision") or "default",
            # None: the backend started before detharness loaded jax, with flags it cannot know.
            "jax.xla_gpu_deterministic_ops": deterministic_ops,
            "jax.threefry_partitionable": bool(_config("jax_threefry_partitionable")),
        }

    def _fingerprint(self) -> dict[str, Any]:
        import jax
        import jaxlib

        return {
            "jax.version": jax.__version__,
            "jaxlib.version": getattr(jaxlib, "__version__", None) or jaxlib.version.__version__,
            "jax.backend": jax.default_backend(),
            "jax.devices": [d.device_kind for d in jax.devices()],
            "jax.x64": bool(_config("jax_enable_x64")),
        }

    # -- devices and arrays ---------------------------------------------------------------------------

    def _cuda_devices(self) -> list[jax.Device]:
        import jax

        for platform in ("cuda", "gpu"):
            try:
                found = [d for d in jax.devices(platform) if d.platform in ("cuda", "gpu")]
            except RuntimeError:
                continue
            # "gpu" is also ROCm's platform; only CUDA devices count as detharness's "cuda".
            found = [d for d in found if "rocm" not in str(getattr(d.client, "platform_version", "")).lower()]
            if found:
                return found
        return []

    def _devices(self) -> list[str]:
        return ["cpu", "cuda"] if self._cuda_devices() else ["cpu"]

    def _device(self, device: str) -> jax.Device:
        import jax

        kind, index = split_device(device)
        found = jax.devices("cpu") if kind == "cpu" else self._cuda_devices()
        return found[index or 0]

    def _to_native(self, array: np.ndarray, device: str) -> Any:
        import jax

        # jax takes ml_dtypes bfloat16 as it is; float64 stays float64 since x64 is on.
        return jax.device_put(array, self._device(device))

    def to_numpy(self, value: Any) -> np.ndarray:
        import jax

        return np.array(jax.device_get(value), copy=True)

    def synchronize(self, device: str, outputs: Any = None) -> None:
        import jax

        # jax dispatches asynchronously: only the outputs themselves can be waited for.
        if outputs is not None:
            jax.block_until_ready(outputs)  # type: ignore[no-untyped-call]

    # -- prepare ------------------------------------------------------------------------------------

    def _prepare(self, obj: Any, spec: VariantSpec, example_inputs: tuple[Any, ...]) -> Callable[..., Any]:
        import jax

        if not callable(obj):
            raise TypeError(
                f"a jax implementation (or what its builder returns) must be callable, not {type(obj).__name__}"
            )
        # "cache" is taken out of the info into the variant's own ``cache`` field (runner.variant_record).
        self._run_info = {"jax.mode": spec.mode, "jax.device": str(self._device(spec.device)),
                          "cache": {"jax_compile": self._configure_compile_cache()}}
        if spec.mode == "eager":
            return obj  # type: ignore[no-any-return]
        start = time.perf_counter()
        if isinstance(obj, functools.partial) and "params" in obj.keywords and not obj.args:
            # Parameters go in as arguments of the compiled function, as in a real training or
            # serving program, not baked in as constants that XLA may fold at compile time.
            params = obj.keywords["params"]
            rest = {k: v for k, v in obj.keywords.items() if k != "params"}
            fn = obj.func

            def with_params(params: Any, *args: Any) -> Any:
                return fn(*args, params=params, **rest)

            compiled = jax.jit(with_params).lower(params, *example_inputs).compile()

            def call(*args: Any) -> Any:
                return compiled(params, *args)

        else:
            compiled = jax.jit(obj).lower(*example_inputs).compile()
            call = compiled
        # Compiled ahead with the example inputs, so the timed call runs code, not the compiler.
        self._run_info["jax.compile_seconds"] = round(time.perf_counter() - start, 6)
        return call
