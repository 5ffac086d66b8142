"""Serialization round trips: a built model's outputs and parameters before and after a save and a load.

A round trip is a mode of a module builder, ``roundtrip:<format>``, so its variant id reads as what
it does: ``models/mlp[torch:cpu:float32:roundtrip:safetensors]``. In one worker, for one variant:

1. the builder's object is prepared in the format's ``before_mode`` (torch ``eager``, jax ``jit``,
   numpy ``eager``; :meth:`RoundtripFormat.before_spec` is that variant) and run once, seeded: the
   *before* outputs;
2. every parameter it holds is hashed (sha256 of dtype, shape and bytes);
3. the format saves it into a fresh temporary folder and loads it back, into a fresh object whose
   floating parameters are NaN until the load fills them (a parameter the load forgets shows up);
4. the loaded object is prepared and run as the variant's call: the *after* outputs, which are the
   variant's outputs (so ``compare`` holds them against another bundle like any other variant);
5. the loaded parameters are hashed; those whose bytes changed are kept, before and after, so the
   ``roundtrip`` check can say which element moved and by how much.

Formats are objects (:class:`RoundtripFormat`) registered per backend with
:func:`register_format`; a case may also hand its own (a subclass of a built-in one) to
:meth:`detharness.cases.Case.roundtrip`. Built in:

- torch: ``torch.save`` (a state_dict, read back with ``torch.load(weights_only=True)``),
  ``safetensors``, ``torch.export`` (``torch.export.save`` / ``load``), and ONNX:
  ``onnx:<exporter>:opset<N>:opt:<level>``, exported by the dynamo or the TorchScript exporter at
  two opsets, saved as a ``.onnx`` file, loaded and run in ONNX Runtime at each graph optimization
  level;
- jax: ``jax.export`` (``Exported.serialize`` / ``jax.export.deserialize``);
- numpy: ``json`` and ``safetensors`` for fitted preprocessing objects (a scaler, an encoder) that
  give their state as arrays (``get_state()``) and are rebuilt from it (``from_state(state)``).
  Never pickle.

A format that keeps the runtime (every one except ONNX) must give the same bits: ``exact``. ONNX
hands the numbers to another runtime, so its after outputs are judged with the case's tolerance.

This module imports no framework at load: case files import it to name formats.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import inspect
import json
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detharness.backends.base import VariantSpec
from detharness.dtypes import FLOAT_DTYPES, dtype_name, numpy_dtype, torch_dtype
from detharness.errors import CaseError

PREFIX = "roundtrip:"

#: The opsets the ONNX round trips export at: ONNX Runtime 1.32 runs both, the dynamo exporter
#: writes 18 natively (lower ones go through the version converter, 4 s for the first model here),
#: and 20 is the highest the TorchScript exporter writes and torch 2.13's default.
ONNX_OPSETS: tuple[int, ...] = (18, 20)
ONNX_EXPORTERS: tuple[str, ...] = ("dynamo", "torchscript")
#: ONNX Runtime's graph optimization levels as the onnxruntime backend's modes name them.
ONNX_LEVELS: tuple[str, ...] = ("disabled", "basic", "extended", "layout", "all")


def is_roundtrip_mode(mode: str) -> bool:
    return mode.startswith(PREFIX)


def mode_of(format_name: str) -> str:
    return PREFIX + format_name


def sha256_of(array: np.ndarray) -> str:
    """The bitwise hash of a parameter: its dtype name, shape and bytes."""
    arr = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{dtype_name(arr.dtype)}|{arr.shape}|".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


@dataclass
class RoundtripContext:
    """What a format may need about the variant: the loaded backend, device, dtype and inputs.

    ``build`` makes a fresh object from the case's parameters (the target a state_dict loads
    into); ``obj`` is the object the before outputs came from and ``before_raw`` those outputs as
    the framework returned them (their structure is what an ONNX graph's flat outputs rebuild);
    ``key`` names the built object across variants, so that one export can serve several modes;
    ``info`` collects what the run used, for the variant's record; ``variant_id`` is the round
    trip's variant id, for messages.
    """

    backend: Any
    device: str
    dtype: str
    example_inputs: tuple[Any, ...]
    build: Callable[[], Any]
    key: str
    obj: Any = None
    before_raw: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    variant_id: str = ""


class RoundtripFormat:
    """One way to save and load what a module builder returns, on one backend.

    Subclasses override :meth:`save` and :meth:`load`, and where it applies :meth:`parameters`
    (the named arrays an object holds), :meth:`loaded_parameters` and :meth:`prepare_loaded` (the
    callable that runs the loaded object; by default the backend prepares it in ``before_mode``).
    """

    name: str = ""
    backend: str = ""
    #: Whether the after outputs must equal the before outputs bit for bit.
    exact: bool = True
    #: The backend mode that computes the before outputs (and, by default, runs the loaded object).
    before_mode: str = "eager"
    #: Modules that must be installed for the format to work (a missing one skips the variant).
    requires: tuple[str, ...] = ()
    description: str = ""

    @property
    def mode(self) -> str:
        return mode_of(self.name)

    def missing(self) -> str | None:
        """Why the format cannot run here (a package missing), or None."""
        absent = [m for m in self.requires if importlib.util.find_spec(m) is None]
        return f"the {self.mode} mode needs {', '.join(absent)}" if absent else None

    def before_spec(self, ctx: RoundtripContext) -> VariantSpec:
        """The variant that computes the before outputs: the round trip's device and dtype in
        :attr:`before_mode`, as a module builder's object.

        What :func:`run_roundtrip` prepares the built object with and, by default,
        :meth:`prepare_loaded` the loaded one. The variant id stays the round trip's, so messages
        name the variant the user asked for.
        """
        return VariantSpec(device=ctx.device, dtype=ctx.dtype, mode=self.before_mode, is_module=True,
                           variant_id=ctx.variant_id)

    def save(self, obj: Any, folder: Path, ctx: RoundtripContext) -> None:
        raise NotImplementedError

    def load(self, folder: Path, ctx: RoundtripContext) -> Any:
        raise NotImplementedError

    def prepare_loaded(self, loaded: Any, ctx: RoundtripContext) -> Callable[..., Any]:
        return ctx.backend.prepare(loaded, self.before_spec(ctx), ctx.example_inputs)  # type: ignore[no-any-return]

    def parameters(self, obj: Any, ctx: RoundtripContext) -> dict[str, np.ndarray] | None:
        """The named arrays ``obj`` holds, or None where they cannot be read (constants in a program)."""
        return None

    def loaded_parameters(self, loaded: Any, ctx: RoundtripContext) -> dict[str, np.ndarray] | None:
        return self.parameters(loaded, ctx)

    def fingerprint(self) -> str:
        """What defines the format, for the case fingerprint: its name and its class's source."""
        return f"{self.backend}:{self.name}:{_source_digest(type(self))}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.backend}:{self.mode}>"


_SOURCE_DIGESTS: dict[Any, str] = {}


def _source_digest(cls: type) -> str:
    """The first 16 hex digits of the sha256 of ``cls``'s source (its qualified name where the
    source cannot be read). Once per class and process: ``inspect.getsource`` parses the class's
    whole module to find it, 10 ms a call, and every case with round trips asks for each format."""
    digest = _SOURCE_DIGESTS.get(cls)
    if digest is None:
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            source = f"{cls.__module__}.{cls.__qualname__}"
        digest = _SOURCE_DIGESTS[cls] = hashlib.sha256(source.encode()).hexdigest()[:16]
    return digest


# -- torch ------------------------------------------------------------------------------------


def _torch_module(obj: Any, fmt: RoundtripFormat) -> Any:
    import torch

    if not isinstance(obj, torch.nn.Module):
        from detharness.backends import UnsupportedVariant

        raise UnsupportedVariant(f"the {fmt.mode} mode saves a torch.nn.Module; the builder returned {type(obj).__name__}")
    return obj


class TorchModuleFormat(RoundtripFormat):
    """Base of the torch formats: what they save is a ``torch.nn.Module``, its parameters its state_dict."""

    backend = "torch"

    def parameters(self, obj: Any, ctx: RoundtripContext) -> dict[str, np.ndarray] | None:
        return {name: ctx.backend.to_numpy(t) for name, t in _torch_module(obj, self).state_dict().items()}


class TorchStateDictFormat(TorchModuleFormat):
    """Base of the torch formats that save a ``state_dict`` and load it into a fresh module."""

    def fresh_module(self, ctx: RoundtripContext) -> Any:
        """A new module from the builder on the variant's device and dtype, its floats all NaN.

        Loading into a module that already holds the right weights would hide a load that
        forgets some: NaN makes every parameter the load does not fill show up in the outputs.
        """
        import torch

        module = _torch_module(ctx.build(), self).to(device=torch.device(ctx.device))
        if ctx.dtype in FLOAT_DTYPES:
            module = module.to(dtype=torch_dtype(torch, ctx.dtype))
        with torch.no_grad():
            for tensor in module.state_dict().values():
                if tensor.is_floating_point():
                    tensor.fill_(float("nan"))
        return module


class TorchSaveFormat(TorchStateDictFormat):
    name = "torch.save"
    description = "torch.save(state_dict), then torch.load(weights_only=True) into a fresh module"

    def save(self, obj: Any, folder: Path, ctx: RoundtripContext) -> None:
        import torch

        torch.save(_torch_module(obj, self).state_dict(), folder / "state_dict.pt")

    def load(self, folder: Path, ctx: RoundtripContext) -> Any:
        import torch

        # weights_only=True: tensors and plain containers only, never arbitrary pickled objects.
        state = torch.load(folder / "state_dict.pt", map_location=ctx.device, weights_only=True)
        module = self.fresh_module(ctx)
        module.load_state_dict(state, strict=True)
        return module


class TorchSafetensorsFormat(TorchStateDictFormat):
    name = "safetensors"
    requires = ("safetensors",)
    description = "safetensors.torch.save_model, then load_model into a fresh module"

    def save(self, obj: Any, folder: Path, ctx: RoundtripContext) -> None:
        from safetensors.torch import save_model

        # save_model (not save_file) keeps tied weights: save_file refuses tensors sharing memory.
        save_model(_torch_module(obj, self), str(folder / "model.safetensors"))

    def load(self, folder: Path, ctx: RoundtripContext) -> Any:
        from safetensors.torch import load_model

        module = self.fresh_module(ctx)
        load_model(module, str(folder / "model.safetensors"), strict=True, device=ctx.device)
        return module


class TorchExportFormat(TorchModuleFormat):
    name = "torch.export"
    description = "torch.export.export, torch.export.save and torch.export.load; runs ExportedProgram.module()"

    def loaded_parameters(self, loaded: Any, ctx: RoundtripContext) -> dict[str, np.ndarray] | None:
        return {name: ctx.backend.to_numpy(t) for name, t in loaded.state_dict.items()}

    def save(self, obj: Any, folder: Path, ctx: RoundtripContext) -> None:
        import torch

        from detharness.backends.torch_backend import quiet_export

        with quiet_export():
            program = torch.export.export(_torch_module(obj, self), tuple(ctx.example_inputs))
        torch.export.save(program, str(folder / "model.pt2"))

    def load(self, folder: Path, ctx: RoundtripContext) -> Any:
        import torch

        return torch.export.load(str(folder / "model.pt2"))

    def prepare_loaded(self, loaded: Any, ctx: RoundtripContext) -> Callable[..., Any]:
        import torch

        # The exported graph is already in eval form; ExportedProgram.module() refuses .eval().
        module = loaded.module()

        def call(*args: Any) -> Any:
            with torch.inference_mode():
                return module(*args)

        return call


# Exports shared by the five optimization levels of one (exporter, opset): the dynamo exporter
# takes ~0.5 s a model, paid once instead of five times. Bounded: a worker runs many cases.
# Each entry keeps whether the persistent cache (detharness.cache) had it when it was made.
_ONNX_EXPORTS: dict[tuple[str, str, int, bool], tuple[bytes, str]] = {}
_ONNX_EXPORTS_KEPT = 8


class TorchOnnxFormat(TorchModuleFormat):
    """Export to ONNX, save the ``.onnx`` file, load it and run it in ONNX Runtime at one level."""

    exact = False  # another runtime computes the after outputs: the case's tolerance judges them

    def __init__(self, exporter: str, opset: int, level: str) -> None:
        self.exporter = exporter
        self.opset = opset
        self.level = level
        self.name = f"onnx:{exporter}:opset{opset}:opt:{level}"
        self.requires = ("onnx", "onnxruntime") + (("onnxscript",) if exporter == "dynamo" else ())
        self.description = (f"torch.onnx.export ({exporter} exporter, opset {opset}), onnx.save and onnx.load, "
                            f"then ONNX Runtime at optimization level {level}")

    def loaded_parameters(self, loaded: Any, ctx: RoundtripContext) -> dict[str, np.ndarray] | None:
        from onnx import numpy_helper

        # Initializers keep the module's parameter names with both exporters; a parameter the
        # exporter folded or renamed is simply not found, and reported as such.
        return {init.name: numpy_helper.to_array(init) for init in loaded.graph.initializer}

    def _export(self, obj: Any, ctx: RoundtripContext) -> bytes:
        import torch

        from detharness import cache

        key = (ctx.key, self.exporter, self.opset, cache.enabled())
        if key not in _ONNX_EXPORTS:
            # Exported on the CPU, as the torch backend's onnx modes do: the graph does not depend
            # on the device, and the variant's own module stays where it is.
            module = copy.deepcopy(_torch_module(obj, self)).to(device="cpu")
            inputs = tuple(t.detach().cpu() if isinstance(t, torch.Tensor) else t for t in ctx.example_inputs)
            while len(_ONNX_EXPORTS) >= _ONNX_EXPORTS_KEPT:
                _ONNX_EXPORTS.pop(next(iter(_ONNX_EXPORTS)))
            _ONNX_EXPORTS[key] = ctx.backend.export_onnx_cached(module, inputs, self.exporter, opset=self.opset)
        data, status = _ONNX_EXPORTS[key]
        # Taken out of the info into the variant's own ``cache`` field (runner.variant_record).
        ctx.info["cache"] = {"onnx_export": status}
        return data

    def save(self, obj: Any, folder: Path, ctx: RoundtripContext) -> None:
        (folder / "model.onnx").write_bytes(self._export(obj, ctx))

    def load(self, folder: Path, ctx: RoundtripContext) -> Any:
        from detharness.backends.onnx_model import load_model_safely

        return load_model_safely(folder / "model.onnx")

    def prepare_loaded(self, loaded: Any, ctx: RoundtripContext) -> Callable[..., Any]:
        from torch.utils import _pytree as pytree

        from detharness.backends import UnsupportedVariant
        from detharness.backends import onnxruntime_backend as ort
        from detharness.backends.onnx_model import model_opset

        ok, why = ort.provider_supports(ctx.device, ctx.dtype)
        if not ok:
            raise UnsupportedVariant(why)
        leaves, tree_spec = pytree.tree_flatten(ctx.before_raw)
        # ort.create_session: the same options (errors-only logging included) as every session.
        session, info = ort.create_session(loaded.SerializeToString(), device=ctx.device,
                                           level=ort.OPTIMIZATION_LEVELS[f"opt:{self.level}"],
                                           deterministic=ctx.backend.deterministic)
        if len(session.get_outputs()) != len(leaves):
            raise UnsupportedVariant(f"the {self.exporter} exporter gave {len(session.get_outputs())} outputs for "
                                     f"the module's {len(leaves)} (non-tensor outputs are not exported)")
        ctx.info.update({"torch.onnx.exporter": self.exporter, "onnx.opset": model_opset(loaded), **info})
        to_numpy = ctx.backend.to_numpy

        def call(*args: Any) -> Any:
            return pytree.tree_unflatten(ort.run_session(session, [to_numpy(a) for a in args]), tree_spec)

        # --intermediates records the loaded model's layers, named by torch module (dynamo exports).
        from detharness.backends import onnx_capture

        return ort.with_layers(call, loaded.SerializeToString(), device=ctx.device,
                               level=ort.OPTIMIZATION_LEVELS[f"opt:{self.level}"],
                               deterministic=ctx.backend.deterministic,
                               torch_scopes=onnx_capture.torch_scopes(loaded) if self.exporter == "dynamo" else None)


# -- jax --------------------------------------------------------------------------------------


class JaxExportFormat(RoundtripFormat):
    name = "jax.export"
    backend = "jax"
    before_mode = "jit"
    description = "jax.export.export(jax.jit(f)), Exported.serialize, jax.export.deserialize; runs Exported.call"

    def save(self, obj: Any, folder: Path, ctx: RoundtripContext) -> None:
        import jax

        if not callable(obj):
            raise CaseError(f"the {self.mode} mode exports a callable; the builder returned {type(obj).__name__}")
        # Exported for the variant's platform only: a program exported for another one refuses to run.
        platform = "cuda" if ctx.device.startswith("cuda") else "cpu"
        exported = jax.export.export(jax.jit(obj), platforms=(platform,))(*ctx.example_inputs)
        (folder / "model.jax").write_bytes(exported.serialize())

    def load(self, folder: Path, ctx: RoundtripContext) -> Any:
        import jax

        return jax.export.deserialize(bytearray((folder / "model.jax").read_bytes()))

    def prepare_loaded(self, loaded: Any, ctx: RoundtripContext) -> Callable[..., Any]:
        ctx.info["jax.export.platforms"] = list(loaded.platforms)
        return ctx.backend.prepare(loaded.call, self.before_spec(ctx), ctx.example_inputs)  # type: ignore[no-any-return]

    # A builder's closure holds its parameters as constants inside the exported program: there
    # is nothing separate to hash, and the outputs say whether they survived.


# -- numpy: fitted preprocessing objects ----------------------------------------------------


def _state_of(obj: Any, fmt: RoundtripFormat) -> dict[str, np.ndarray]:
    get_state = getattr(obj, "get_state", None)
    if get_state is None or not hasattr(type(obj), "from_state"):
        raise CaseError(f"the {fmt.mode} mode saves objects with get_state() and a from_state(state) "
                        f"classmethod; {type(obj).__name__} has not both")
    state = get_state()
    if not isinstance(state, Mapping):
        raise CaseError(f"{type(obj).__name__}.get_state() must return a dict of name -> array")
    return {str(k): np.asarray(v) for k, v in state.items()}


class NumpyStateFormat(RoundtripFormat):
    """Base of the formats for fitted preprocessing objects: ``get_state()`` and ``from_state()``."""

    backend = "numpy"

    def parameters(self, obj: Any, ctx: RoundtripContext) -> dict[str, np.ndarray] | None:
        return _state_of(obj, self)

    def rebuild(self, state: dict[str, np.ndarray], ctx: RoundtripContext) -> Any:
        # The serving code knows the class it rebuilds; here it is the fitted object's.
        return type(ctx.obj).from_state(state)


def _json_floats(arr: np.ndarray) -> list[Any]:
    """Float values for JSON, every bit kept.

    float() of a float16, bfloat16 or float32 is exact, and json writes the shortest text that
    reads back to the same double. JSON has no NaN or infinity: infinities travel as "inf" and
    "-inf", and a NaN as "nan:" and its bits in the array's own dtype, so a payload survives too.
    """
    flat = np.ascontiguousarray(arr).ravel()
    bits = flat.view(f"u{flat.dtype.itemsize}")
    out: list[Any] = []
    for value, raw in zip(flat.astype(np.float64).tolist(), bits.tolist(), strict=True):
        if value != value:
            out.append(f"nan:{raw:x}")
        elif value in (float("inf"), float("-inf")):
            out.append("inf" if value > 0 else "-inf")
        else:
            out.append(value)
    return out


def _floats_from_json(data: list[Any], dtype: np.dtype[Any]) -> np.ndarray:
    values = np.asarray([float(v) if isinstance(v, str) and not v.startswith("nan:") else
                         (0.0 if isinstance(v, str) else v) for v in data], dtype=np.float64).astype(dtype)
    bits = values.view(f"u{dtype.itemsize}")
    for i, v in enumerate(data):
        if isinstance(v, str) and v.startswith("nan:"):
            bits[i] = int(v[4:], 16)
    return values


class NumpyJsonFormat(NumpyStateFormat):
    name = "json"
    description = "the fitted state as JSON (numbers at full precision, strings as strings), rebuilt with from_state"

    def save(self, obj: Any, folder: Path, ctx: RoundtripContext) -> None:
        encoded = {}
        for key, arr in _state_of(obj, self).items():
            name = dtype_name(arr.dtype)
            data = _json_floats(arr) if name in FLOAT_DTYPES else arr.ravel().tolist()
            encoded[key] = {"dtype": name, "shape": list(arr.shape), "data": data}
        (folder / "state.json").write_text(json.dumps(encoded, allow_nan=False))

    def load(self, folder: Path, ctx: RoundtripContext) -> Any:
        raw = json.loads((folder / "state.json").read_text())
        state = {}
        for key, entry in raw.items():
            name = entry["dtype"]
            if name == "str":
                arr = np.asarray(entry["data"], dtype=str)
            elif name in FLOAT_DTYPES:
                arr = _floats_from_json(entry["data"], numpy_dtype(name))
            else:
                arr = np.asarray(entry["data"], dtype=numpy_dtype(name))
            state[key] = arr.reshape(entry["shape"])
        return self.rebuild(state, ctx)


class NumpySafetensorsFormat(NumpyStateFormat):
    name = "safetensors"
    requires = ("safetensors",)
    description = "numeric state in safetensors (strings in its metadata as JSON), rebuilt with from_state"

    def save(self, obj: Any, folder: Path, ctx: RoundtripContext) -> None:
        from safetensors.numpy import save_file

        tensors: dict[str, np.ndarray] = {}
        meta: dict[str, str] = {}
        for key, arr in _state_of(obj, self).items():
            name = dtype_name(arr.dtype)
            if name == "str":
                meta[f"str:{key}"] = json.dumps({"shape": list(arr.shape), "data": arr.ravel().tolist()})
            elif name == "bfloat16":
                # safetensors' numpy API has no ml_dtypes bfloat16: the bits travel as uint16.
                tensors[key] = np.require(arr, requirements="C").view(np.uint16)
                meta[f"bfloat16:{key}"] = "1"
            else:
                tensors[key] = np.require(arr, requirements="C")  # ascontiguousarray makes 0-d arrays 1-d
        save_file(tensors, str(folder / "state.safetensors"), metadata=meta or None)

    def load(self, folder: Path, ctx: RoundtripContext) -> Any:
        from safetensors import safe_open

        path = str(folder / "state.safetensors")
        state: dict[str, np.ndarray] = {}
        with safe_open(path, framework="np") as f:
            meta = f.metadata() or {}
            for key in f.keys():  # noqa: SIM118  (safe_open has keys() but is not iterable)
                arr = f.get_tensor(key)
                state[key] = arr.view(numpy_dtype("bfloat16")) if f"bfloat16:{key}" in meta else arr
        for meta_key, text in meta.items():
            if meta_key.startswith("str:"):
                entry = json.loads(text)
                state[meta_key[4:]] = np.asarray(entry["data"], dtype=str).reshape(entry["shape"])
        return self.rebuild(state, ctx)


# -- the registry -----------------------------------------------------------------------------

FORMATS: dict[tuple[str, str], RoundtripFormat] = {}


def register_format(fmt: RoundtripFormat, *, replace: bool = False) -> RoundtripFormat:
    """Make ``fmt`` available to every case as mode ``roundtrip:<name>`` of its backend."""
    if not fmt.name or not fmt.backend:
        raise CaseError(f"a round-trip format needs a name and a backend: {fmt!r}")
    key = (fmt.backend, fmt.name)
    if key in FORMATS and not replace and FORMATS[key].fingerprint() != fmt.fingerprint():
        raise CaseError(f"round-trip format {fmt.name!r} of backend {fmt.backend!r} is registered twice "
                        f"({FORMATS[key]!r} and {fmt!r}); pass replace=True to override")
    FORMATS[key] = fmt
    return fmt


def formats_for(backend: str) -> list[RoundtripFormat]:
    return [fmt for (b, _), fmt in FORMATS.items() if b == backend]


def find_format(backend: str, name: str, local: Mapping[str, RoundtripFormat] | None = None) -> RoundtripFormat | None:
    """The format called ``name`` for ``backend``: the case's own first, then the registered ones."""
    if local and name in local and local[name].backend == backend:
        return local[name]
    return FORMATS.get((backend, name))


def roundtrip_modes(backend: str, names: Iterable[str] | None = None) -> tuple[str, ...]:
    """The modes of the registered formats of ``backend`` (all, or those named), for ``modes=``."""
    available = {fmt.name: fmt for fmt in formats_for(backend)}
    chosen = list(names) if names is not None else list(available)
    unknown = [n for n in chosen if n not in available]
    if unknown:
        raise CaseError(f"no round-trip format {unknown[0]!r} for backend {backend!r} "
                        f"(known: {', '.join(available) or 'none'})")
    return tuple(mode_of(n) for n in chosen)


for _fmt in (TorchSaveFormat(), TorchSafetensorsFormat(), TorchExportFormat(),
             *(TorchOnnxFormat(e, o, lv) for e in ONNX_EXPORTERS for o in ONNX_OPSETS for lv in ONNX_LEVELS),
             JaxExportFormat(), NumpyJsonFormat(), NumpySafetensorsFormat()):
    register_format(_fmt)
del _fmt


# -- running one round trip -------------------------------------------------------------------


@dataclass
class RoundtripResult:
    """What one round trip found, ready for the variant's record (arrays as numpy)."""

    format: str
    exact: bool
    description: str
    before_outputs: dict[str, np.ndarray]
    params: dict[str, dict[str, Any]]
    changed_params: dict[str, dict[str, np.ndarray]]
    notes: list[str]
    saved_bytes: int
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "exact": self.exact, "description": self.description,
                "before_outputs": self.before_outputs, "params": self.params, "changed_params": self.changed_params,
                "notes": self.notes, "saved_bytes": self.saved_bytes, "seconds": self.seconds}


def compare_parameters(before: Mapping[str, np.ndarray] | None, after: Mapping[str, np.ndarray] | None,
                       ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, np.ndarray]], list[str]]:
    """Hash every parameter on both sides; keep the arrays of those whose bytes changed.

    Returns ``(params, changed, notes)``: ``params`` maps a name to its dtype, shape and the
    sha256 ``before`` and ``after`` (None on a side that lacks it); ``changed`` holds both arrays
    of each parameter whose hash changed at the same dtype and shape.
    """
    if before is None:
        return {}, {}, ["the format keeps no parameters apart from the program (constants inside it): not hashed"]
    after = after or {}
    params: dict[str, dict[str, Any]] = {}
    changed: dict[str, dict[str, np.ndarray]] = {}
    not_found: list[str] = []
    reshaped: list[str] = []
    for name, b in before.items():
        entry: dict[str, Any] = {"dtype": dtype_name(b.dtype), "shape": list(b.shape), "before": sha256_of(b), "after": None}
        a = after.get(name)
        if a is None:
            not_found.append(name)
        elif dtype_name(a.dtype) != entry["dtype"] or tuple(a.shape) != tuple(b.shape):
            reshaped.append(f"{name} ({dtype_name(a.dtype)} {list(a.shape)})")
            entry["after_dtype"], entry["after_shape"] = dtype_name(a.dtype), list(a.shape)
        else:
            entry["after"] = sha256_of(a)
            if entry["after"] != entry["before"]:
                changed[name] = {"before": np.array(b, copy=True), "after": np.array(a, copy=True)}
        params[name] = entry
    notes = []
    if not_found:
        notes.append(f"{len(not_found)} of {len(before)} parameters not found under their own name after loading "
                     f"(folded or renamed by the exporter): {', '.join(not_found[:4])}"
                     + (" ..." if len(not_found) > 4 else ""))
    if reshaped:
        notes.append(f"stored with another dtype or shape, not hashed against the module's: {', '.join(reshaped[:4])}")
    return params, changed, notes


def run_roundtrip(fmt: RoundtripFormat, obj: Any, ctx: RoundtripContext, inputs: Sequence[Any], *, seed: int,
                  names: Sequence[str] | None) -> tuple[Callable[..., Any], RoundtripResult]:
    """Compute the before outputs, save and load ``obj``, and return the loaded object's callable.

    The callable is what the runner times and repeats: its outputs are the variant's outputs.
    """
    backend = ctx.backend
    before_call = backend.prepare(obj, fmt.before_spec(ctx), inputs)
    raw, _ = backend.run(before_call, inputs, device=ctx.device, seed=seed)
    ctx.obj, ctx.before_raw = obj, raw
    before_outputs = backend.outputs_to_numpy(raw, names=names)
    params_before = fmt.parameters(obj, ctx)
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="detharness-roundtrip-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        fmt.save(obj, folder, ctx)
        seconds["save"] = round(time.perf_counter() - start, 6)
        saved_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        start = time.perf_counter()
        loaded = fmt.load(folder, ctx)
        seconds["load"] = round(time.perf_counter() - start, 6)
        # Prepared while the files still exist, for formats that read lazily.
        after_call = fmt.prepare_loaded(loaded, ctx)
    params, changed, notes = compare_parameters(params_before, fmt.loaded_parameters(loaded, ctx))
    result = RoundtripResult(format=fmt.name, exact=fmt.exact, description=fmt.description,
                             before_outputs=before_outputs, params=params, changed_params=changed, notes=notes,
                             saved_bytes=saved_bytes, seconds=seconds)
    return after_call, result
