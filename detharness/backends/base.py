"""The backend template: what every framework adapter does, and the shared defaults.

A :class:`Backend` is a cheap object. Creating one, :meth:`Backend.is_installed` and
:meth:`Backend.describe` import no framework, so ``detharness list`` and ``--help`` stay fast and a
missing framework still shows up, marked unavailable with its install hint. The framework is
imported by :meth:`Backend.load`, once, inside the worker process that runs the backend.

The public methods validate their arguments and then call a protected hook (``_load_framework``,
``_prepare``, ``_to_native`` ...); a new backend overrides the hooks, not the public methods.

Two small frozen records cross this boundary: :class:`VariantSpec`, the one variant a backend is
asked about (:meth:`Backend.supports`, :meth:`Backend.prepare` and their hooks take it whole), and
:class:`BackendInfo`, what :meth:`Backend.info` says about a backend without loading it.

Order in a worker (see :meth:`Backend.apply_switches`)::

    switches = backend.apply_switches(deterministic)   # sets env variables, then load(), then flags
    backend.load()                                      # a no-op here: apply_switches loaded it
    fingerprint = backend.fingerprint()

``apply_switches`` must come first: some switches are environment variables that a framework reads
once when it starts (jax reads ``XLA_FLAGS`` when its XLA backend starts), so it sets those, then
loads the framework itself, then sets the in-framework flags. Calling ``load()`` first works for
every switch that can still take effect; a backend raises :class:`BackendError` where a switch
asked for can no longer take effect, rather than record a switch that is not in force.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from detharness._io import to_jsonable
from detharness.dtypes import ALL_DTYPES, dtype_name
from detharness.errors import BackendError, DetHarnessError, UsageError

#: The device kinds detharness names. A backend maps them to its own names (jax calls CUDA "gpu").
DEVICE_KINDS: tuple[str, ...] = ("cpu", "cuda")


class OutputError(TypeError):
    """What an implementation returned is not outputs detharness can compare: a variant's error."""


class UnsupportedVariant(DetHarnessError):
    """A variant that cannot run here: the runner records it as ``skipped`` with :attr:`reason`.

    Raised by :meth:`Backend.prepare` when :meth:`Backend.supports` says no, and when the framework
    itself finds out late that it cannot run this model (onnxruntime with no kernel for an op at a
    dtype, a model whose inputs have another dtype than the variant's).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def split_device(device: str) -> tuple[str, int | None]:
    """``"cuda:1"`` -> ``("cuda", 1)``, ``"cpu"`` -> ``("cpu", None)``; other kinds are a usage error."""
    kind, sep, index = device.partition(":")
    if kind not in DEVICE_KINDS or (sep and not index.isdigit()):
        raise UsageError(f"unknown device {device!r}; use one of: {', '.join(DEVICE_KINDS)} (or cuda:N)")
    return kind, int(index) if sep else None


@dataclass(frozen=True)
class VariantSpec:
    """One variant as a backend sees it: where it runs, at which dtype, in which mode.

    ``device`` is a detharness device (``"cpu"``, ``"cuda"``, ``"cuda:1"``), ``dtype`` a dtype
    name (``"float32"``), ``mode`` one of the backend's :attr:`Backend.modes`. ``is_module`` says
    whether the implementation is a module builder (the modes in :attr:`Backend.module_modes`
    need one). ``variant_id`` is the variant's id, ``CASE[IMPL:DEVICE:DTYPE:MODE]``, for messages;
    empty where there is no case (a direct call).
    """

    device: str
    dtype: str
    mode: str
    is_module: bool = False
    variant_id: str = ""

    @property
    def kind(self) -> str:
        """The device kind, ``"cpu"`` or ``"cuda"``; :class:`UsageError` for an unknown device."""
        return split_device(self.device)[0]

    @property
    def index(self) -> int | None:
        """The device index (``1`` for ``"cuda:1"``), or None where the device names none."""
        return split_device(self.device)[1]


@dataclass(frozen=True)
class BackendInfo:
    """What ``detharness list`` and ``env`` show about a backend; building it imports no framework."""

    name: str
    installed: bool
    version: str | None
    install_hint: str
    modes: tuple[str, ...]
    default_modes: tuple[str, ...]
    module_modes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (tuples as lists)."""
        return jsonable(dataclasses.asdict(self))  # type: ignore[no-any-return]


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (non-finite floats as "inf", "-inf", "nan"; anything unknown as
    its ``str``): what a backend records about a run or a fingerprint."""
    return to_jsonable(value, str)


class Backend:
    """One framework: its devices, dtypes, modes, switches and fingerprint; lazy imports.

    Subclasses set the class attributes and override the ``_hooks``. Every method except
    :meth:`is_installed`, :meth:`version`, :meth:`info` and :meth:`describe` loads the framework
    on first use.
    """

    #: The registry key and the first part of a variant's bracket: ``case[torch:cpu:float32:eager]``.
    name: str = ""
    #: The top-level module to import; ``is_installed`` looks it up with ``importlib.util.find_spec``.
    import_name: str = ""
    #: Further top-level modules that must be installed for the backend to work (jax needs jaxlib).
    requires: tuple[str, ...] = ()
    #: Distributions whose metadata gives the version without importing (first one installed wins).
    distributions: tuple[str, ...] = ()
    #: The command that installs the framework, shown by ``detharness list`` when it is missing.
    install_hint: str = ""
    #: Every mode this backend can run. A mode may hold a colon (``onnx:torchscript``).
    modes: tuple[str, ...] = ("eager",)
    #: The modes a case gets when its implementation names none (see :meth:`modes_for`).
    default_modes: tuple[str, ...] = ("eager",)
    #: The modes that need a module builder (export, sessions): plain functions cannot run in them.
    module_modes: tuple[str, ...] = ()
    #: The dtype names arrays may have on the way in and out.
    dtypes: tuple[str, ...] = ALL_DTYPES

    def __init__(self) -> None:
        self._loaded = False
        self._deterministic = False
        self._run_info: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # -- no framework import ------------------------------------------------------------------

    def is_installed(self) -> bool:
        """Whether the framework can be imported here; imports nothing."""
        return all(_module_found(module) for module in (self.import_name, *self.requires))

    def version(self) -> str | None:
        """The framework's version from its distribution's metadata, without importing it."""
        for dist in self.distributions:
            found = _distribution_version(dist)
            if found is not None:
                return found
        return None

    def info(self) -> BackendInfo:
        """What the backend is, as ``detharness list`` and ``env`` show it; imports no framework."""
        installed = self.is_installed()
        return BackendInfo(
            name=self.name,
            installed=installed,
            version=self.version() if installed else None,
            install_hint=self.install_hint,
            modes=tuple(self.modes),
            default_modes=tuple(self.default_modes),
            module_modes=tuple(self.module_modes),
        )

    def describe(self) -> dict[str, Any]:
        """:meth:`info` as a JSON-ready dict (modes as lists); imports no framework."""
        return self.info().to_json()

    def modes_for(self, is_module: bool) -> tuple[str, ...]:
        """The default modes that apply to an implementation: plain functions skip module modes."""
        return tuple(m for m in self.default_modes if is_module or m not in self.module_modes)

    # -- loading and switches -----------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """Whether :meth:`load` has imported the framework in this process."""
        return self._loaded

    @property
    def deterministic(self) -> bool:
        """Whether the last :meth:`apply_switches` turned the determinism switches on."""
        return self._deterministic

    def load(self) -> None:
        """Import the framework (once); :class:`BackendError` with the install hint if it is missing."""
        if self._loaded:
            return
        if not self.is_installed():
            raise BackendError(f"backend {self.name!r} is not installed; install it with: {self.install_hint}")
        self._load_framework()
        self._loaded = True

    #: Environment variables a worker process of this backend sets (where the user has not) before
    #: the framework starts: process settings that change no result. Never set in a caller's own
    #: process (``--in-process``), whose environment is the caller's.
    worker_environment: ClassVar[Mapping[str, str]] = {}

    def apply_switches(self, deterministic: bool = False) -> dict[str, Any]:
        """Set the framework's determinism switches if ``deterministic``; return the switches in force.

        Call it before :meth:`load` (it loads the framework itself): environment variables that the
        framework reads when it starts are set first. With ``deterministic=False`` nothing is
        changed (frameworks keep their defaults) and the switches are only read, so the record
        says what was in force either way. The keys are flat and dotted, prefixed by the backend.
        """
        self._set_environment(deterministic)
        self.load()
        self._deterministic = deterministic
        if deterministic:
            self._set_deterministic()
        return self.switches()

    def reload_settings(self) -> None:
        """Put the backend's own framework settings back, as loading and :meth:`apply_switches` set them.

        A worker process runs one backend and nothing else, so its settings hold. A process shared
        with other code (pytest's, under the plugin) may change a process-wide setting after the
        backend loaded (a fixture turning jax's ``jax_enable_x64`` off again); call this before
        each variant there. It re-runs what loading sets (the ``_load_framework`` hook: jax's x64)
        and, after ``apply_switches(deterministic=True)``, the in-framework determinism switches.
        Environment variables read once at start are not touched: they cannot change now. Loads
        the framework if it is not loaded yet.
        """
        if self._loaded:
            self._load_framework()
        else:
            self.load()
        if self._deterministic:
            self._set_deterministic()

    def switches(self) -> dict[str, Any]:
        """The switches in force now, read from the framework (changes nothing)."""
        self.load()
        return jsonable(self._read_switches())  # type: ignore[no-any-return]

    def fingerprint(self) -> dict[str, Any]:
        """Flat dotted keys about the framework and the hardware it sees, JSON-serializable."""
        self.load()
        return jsonable(self._fingerprint())  # type: ignore[no-any-return]

    def devices(self) -> list[str]:
        """The device kinds this backend can use here, ``"cpu"`` first."""
        self.load()
        return self._devices()

    # -- variants -----------------------------------------------------------------------------

    def supports(self, spec: VariantSpec) -> tuple[bool, str]:
        """Whether the variant ``spec`` can run here, and if not a short reason for its ``skipped`` result.

        Checks, in order: the framework is installed, the device is known, the mode is one of
        :attr:`modes`, a module mode has a module builder (``spec.is_module``), the dtype is one of
        :attr:`dtypes`, the backend sees the device here; then the backend's own ``_supports``
        hook. Loads the framework (device probes need it) unless an earlier check already says no.
        """
        _check_spec(spec, "supports")
        if not self.is_installed():
            return False, f"{self.name} is not installed ({self.install_hint})"
        try:
            kind, _ = split_device(spec.device)
        except UsageError as exc:
            return False, str(exc)
        if spec.mode not in self.modes:
            return False, f"{self.name} has no mode {spec.mode!r} (modes: {', '.join(self.modes)})"
        if not spec.is_module and spec.mode in self.module_modes:
            return False, f"the {spec.mode} mode needs a module builder, and this implementation is a plain function"
        if spec.dtype not in self.dtypes:
            return False, f"{self.name} takes no {spec.dtype} arrays"
        if kind not in self.devices():
            return False, f"{self.name} sees no {kind} device here"
        return self._supports(spec)

    def to_native(self, array: np.ndarray, device: str = "cpu") -> Any:
        """The framework's array for a numpy array (already of the variant's dtype), on ``device``."""
        if not isinstance(array, np.ndarray):
            raise TypeError(f"to_native takes a numpy array, not {type(array).__name__}")
        name = dtype_name(array.dtype)
        if name not in self.dtypes:
            raise UnsupportedVariant(f"{self.name} takes no {name} arrays")
        split_device(device)
        self.load()
        return self._to_native(array, device)

    def to_numpy(self, value: Any) -> np.ndarray:
        """A numpy array (bfloat16 as ml_dtypes) for one native output value; owns its memory."""
        return np.array(value, copy=True)

    def outputs_to_numpy(self, out: Any, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Name each output of a call and convert it with :meth:`to_numpy`.

        A dict keeps its keys; a single array becomes ``{"y": ...}``; a tuple or list becomes
        ``{"y0": ..., "y1": ...}``; a named tuple uses its field names. ``names`` renames a single
        array or the items of a tuple or list, in order. Nested containers get dotted names
        (``{"a": (x, y)}`` -> ``a.0``, ``a.1``). Raises :class:`OutputError` for ``None`` (a forgotten
        ``return``) and for an output that is not an array of numbers, bools or strings.
        """
        if out is None:
            raise OutputError("the implementation returned None (a forgotten return?); return its outputs: "
                              "a dict of name -> array, one array, or a tuple of arrays")
        return _checked(self._named_outputs(out, names))

    def _named_outputs(self, out: Any, names: Sequence[str] | None) -> dict[str, np.ndarray]:
        if isinstance(out, Mapping):
            return self._flatten(out, "")
        if _is_sequence(out):
            items = list(out)
            if names is not None:
                if len(names) != len(items):
                    raise ValueError(f"{len(names)} output names for {len(items)} outputs")
                return self._flatten(dict(zip(names, items, strict=True)), "")
            if hasattr(out, "_fields"):
                return self._flatten(dict(zip(out._fields, items, strict=True)), "")
            return self._flatten({f"y{i}": v for i, v in enumerate(items)}, "")
        if names is not None:
            if len(names) != 1:
                raise ValueError(f"{len(names)} output names for 1 output")
            return {names[0]: self.to_numpy(out)}
        return {"y": self.to_numpy(out)}

    def _flatten(self, out: Mapping[Any, Any], prefix: str) -> dict[str, np.ndarray]:
        result: dict[str, np.ndarray] = {}
        for key, value in out.items():
            name = f"{prefix}{key}"
            if isinstance(value, Mapping):
                result.update(self._flatten(value, name + "."))
            elif _is_sequence(value):
                keys = value._fields if hasattr(value, "_fields") else range(len(value))
                result.update(self._flatten(dict(zip(keys, value, strict=True)), name + "."))
            elif value is None:
                raise OutputError(f"output {name!r} is None")
            else:
                result[name] = self.to_numpy(value)
        return result

    def prepare(self, obj: Any, spec: VariantSpec, example_inputs: Sequence[Any] = ()) -> Callable[..., Any]:
        """The callable to time: ``obj`` moved, cast, exported or compiled for the variant ``spec``.

        ``obj`` is a plain function (possibly a ``functools.partial`` holding ``params=``) or what a
        module builder returned (``spec.is_module``); ``example_inputs`` are the native inputs the
        call will get (used to export or compile ahead of the timed call). Raises
        :class:`UnsupportedVariant` when :meth:`supports` says no, or when the framework finds out
        late that it cannot run this model. Resets :meth:`run_info`.
        """
        _check_spec(spec, "prepare")
        ok, why = self.supports(spec)
        if not ok:
            raise UnsupportedVariant(why)
        self._run_info = {}
        return self._prepare(obj, spec, tuple(example_inputs))

    def seed(self, seed: int) -> None:
        """Seed the framework's global random streams (dropout and the like) before a call."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, not {type(seed).__name__}")
        self.load()
        self._seed(int(seed))

    def synchronize(self, device: str, outputs: Any = None) -> None:
        """Wait until the work of the last call is done (asynchronous devices and dispatch)."""

    def run_info(self) -> dict[str, Any]:
        """What the last :meth:`prepare` really used: providers, exporter, opset, compile time."""
        return jsonable(self._run_info)  # type: ignore[no-any-return]

    def run(self, call: Callable[..., Any], inputs: Sequence[Any], *, device: str, seed: int) -> tuple[Any, float]:
        """Seed, call and wait: ``(outputs, seconds)``; the seconds cover the call and the wait only."""
        self.seed(seed)
        start = time.perf_counter()
        out = call(*inputs)
        self.synchronize(device, out)
        return out, time.perf_counter() - start

    # -- hooks --------------------------------------------------------------------------------

    def _load_framework(self) -> None:
        importlib.import_module(self.import_name)

    def _set_environment(self, deterministic: bool) -> None:
        """Set environment variables the framework reads when it starts; runs before ``load``."""

    def _set_deterministic(self) -> None:
        """Turn the framework's determinism switches on; runs after ``load``."""

    def _read_switches(self) -> dict[str, Any]:
        return {}

    def _fingerprint(self) -> dict[str, Any]:
        return {f"{self.name}.version": self.version()}

    def _devices(self) -> list[str]:
        return ["cpu"]

    def _supports(self, spec: VariantSpec) -> tuple[bool, str]:
        """What the backend adds to :meth:`supports`; runs after the shared checks passed."""
        return True, ""

    def _to_native(self, array: np.ndarray, device: str) -> Any:
        return array

    def _prepare(self, obj: Any, spec: VariantSpec, example_inputs: tuple[Any, ...]) -> Callable[..., Any]:
        """The callable for a variant :meth:`supports` accepted; by default ``obj`` as it is."""
        if not callable(obj):
            raise TypeError(f"a {self.name} implementation must be callable, not {type(obj).__name__}")
        return obj  # type: ignore[no-any-return]

    def _seed(self, seed: int) -> None:
        """Seed the framework's global streams; frameworks without any (jax) keep this no-op."""


def _module_found(module: str) -> bool:
    """Whether ``module`` can be imported, looked up without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        # ValueError: a module already in sys.modules whose __spec__ is None (a stub).
        return False


def _distribution_version(dist: str) -> str | None:
    # Imported here: importlib.metadata (and the email package it reads metadata with) is a sixth of
    # detharness's own import time, and a run's parent and its workers import detharness at start-up.
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _checked(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``outputs`` if every one is an array of numbers, bools or strings; :class:`OutputError` naming
    the first that is not (an object array from a set or a list of mixed things; datetime64; a
    structured array)."""
    for name, array in outputs.items():
        try:
            known = array.dtype.kind in "US" or dtype_name(array.dtype) in ALL_DTYPES
        except (TypeError, ValueError):
            known = False
        if not known:
            raise OutputError(f"output {name!r} is an array of dtype {array.dtype}; outputs are arrays of numbers, "
                              f"bools or strings ({', '.join(ALL_DTYPES)}, str)")
    return outputs


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (tuple, list))


def _check_spec(spec: Any, method: str) -> None:
    if not isinstance(spec, VariantSpec):
        raise TypeError(
            f"Backend.{method} takes a VariantSpec(device=..., dtype=..., mode=..., is_module=...), "
            f"not {type(spec).__name__}"
        )
