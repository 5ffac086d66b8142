"""ONNX Runtime: sessions over ONNX models, one mode per graph optimization level.

An implementation on this backend is a module builder that returns an ``onnx.ModelProto``, its
serialized bytes, or the path of a ``.onnx`` file (loaded through
:func:`detharness.backends.onnx_model.load_model_safely`). The session's inputs are matched to the
case's inputs in order; its outputs keep their graph names.

The session helpers here (:func:`session_options`, :func:`create_session`, :func:`run_session`) are
shared with the torch backend's ``onnx`` modes and round trips and with the ONNX test-data case
source, so a torch model exported to ONNX runs exactly as a model given directly, and every session
detharness opens logs errors only (see :data:`LOG_SEVERITY`).
"""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from detharness.backends.base import Backend, UnsupportedVariant, VariantSpec, split_device

# Kept importable from this module, where earlier versions defined them.
from detharness.backends.onnx_model import check_external_data as check_external_data
from detharness.backends.onnx_model import external_tensors, model_opset
from detharness.backends.onnx_model import load_model_safely as load_model_safely
from detharness.dtypes import ALL_DTYPES, dtype_name, numpy_dtype
from detharness.errors import CaseError, UsageError

if TYPE_CHECKING:
    import onnxruntime

#: Modes of this backend and the graph optimization level each one runs at. Levels can change
#: bits (ONNX Runtime fuses ops at EXTENDED that it leaves alone at BASIC), so each is a mode.
OPTIMIZATION_LEVELS: dict[str, str] = {
    "opt:all": "ORT_ENABLE_ALL",
    "opt:layout": "ORT_ENABLE_LAYOUT",
    "opt:extended": "ORT_ENABLE_EXTENDED",
    "opt:basic": "ORT_ENABLE_BASIC",
    "opt:disabled": "ORT_DISABLE_ALL",
}

# ONNX Runtime's type strings (NodeArg.type) by detharness dtype name.
_ORT_TYPES: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(bfloat16)": "bfloat16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}

# onnx.TensorProto.BFLOAT16, written out so that moving bfloat16 needs no import of onnx.
_ONNX_BFLOAT16 = 16

#: ``SessionOptions.log_severity_level`` of every session detharness opens: 3 is ERROR (0 verbose,
#: 1 info, 2 warning, 4 fatal; the default, -1, takes the process-wide default logger's WARNING).
#: At WARNING ONNX Runtime writes lines such as "ONNX Runtime only *guarantees* support for models
#: stamped with opset version 7 or above" for each old model, and one for each provider that cannot
#: start, straight to stderr, burying a run's own output. What matters in them is checked in code
#: instead (the providers a session really uses). Runs inherit it (``RunOptions`` default -1).
LOG_SEVERITY = 3

_MISSING_KERNEL = re.compile(r"Could not find an implementation for (\w+)\((\d+)\)")

# One probe per (provider, dtype): whether the provider has kernels for ordinary ops at that dtype.
_PROBED: dict[tuple[str, str], tuple[bool, str]] = {}


def provider_for(device: str) -> str:
    """The execution provider that runs ``device``: ``CPUExecutionProvider`` or ``CUDAExecutionProvider``."""
    kind, _ = split_device(device)
    return "CUDAExecutionProvider" if kind == "cuda" else "CPUExecutionProvider"


def provider_supports(device: str, dtype: str) -> tuple[bool, str]:
    """Whether ONNX Runtime's provider for ``device`` can run ordinary models at ``dtype``.

    Complex tensors are refused by the runtime itself. For bfloat16 a tiny Add/Relu/MatMul model
    is probed once per provider: the CPU provider of 1.32 has none of those kernels, while the
    CUDA provider has them. Other float dtypes are taken as runnable; a model that needs a kernel
    the provider lacks (float64 Conv on CPU) is reported by :func:`create_session` instead.
    """
    import onnxruntime

    provider = provider_for(device)
    if provider not in onnxruntime.get_available_providers():
        return False, f"onnxruntime has no {provider} here (the onnxruntime-gpu package provides it)"
    if dtype.startswith("complex"):
        return False, "onnxruntime has no complex tensors"
    if dtype != "bfloat16":
        return True, ""
    key = (provider, dtype)
    if key not in _PROBED:
        _PROBED[key] = _probe_bfloat16(device)
    return _PROBED[key]


def _probe_bfloat16(device: str) -> tuple[bool, str]:
    provider = provider_for(device)
    short = "CPU" if provider == "CPUExecutionProvider" else "CUDA"
    try:
        import onnx  # noqa: F401  (the probe model is built with onnx.helper)
    except ImportError:
        return False, "bfloat16 support cannot be probed without the onnx package"
    for op in ("Add", "Relu", "MatMul"):
        if not _opens(_probe_model(op), device):
            return False, f"onnxruntime's {short} provider has no bfloat16 kernel for {op}"
    return True, ""


def _opens(model: bytes, device: str) -> bool:
    """Whether the provider for ``device`` has the kernels to open ``model``; a probe that fails
    for any other reason raises :class:`UnsupportedVariant` saying so (a variant is skipped with
    the reason, never the worker ended)."""
    try:
        create_session(model, device=device, level="ORT_DISABLE_ALL", deterministic=False)
    except UnsupportedVariant:
        return False
    except Exception as exc:
        raise UnsupportedVariant(f"onnxruntime could not open its bfloat16 probe model: {exc}") from exc
    return True


def _probe_model(op: str) -> bytes:
    from onnx import TensorProto, helper

    arity = 1 if op == "Relu" else 2
    names = ["a", "b"][:arity]
    graph = helper.make_graph(
        [helper.make_node(op, names, ["y"])],
        "probe",
        [helper.make_tensor_value_info(n, TensorProto.BFLOAT16, [2, 2]) for n in names],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    # The IR version of opset 17 (ONNX 1.12), not the installed onnx package's newest: an older
    # onnxruntime refuses a newer IR ("Unsupported model IR version: 14, max supported IR version:
    # 13" with onnxruntime 1.31), which is no answer about bfloat16 kernels.
    model.ir_version = PROBE_IR_VERSION
    data: bytes = model.SerializeToString()
    return data


#: The IR version of the probe models: opset 17's (ONNX 1.12), read by every onnxruntime since 1.12.
PROBE_IR_VERSION = 8


def session_options(level: str = "ORT_ENABLE_ALL", *, deterministic: bool = False) -> onnxruntime.SessionOptions:
    """The ``SessionOptions`` of every session detharness opens.

    ``level`` is a ``GraphOptimizationLevel`` member name; ``deterministic`` turns on
    ``use_deterministic_compute``. Logging is at :data:`LOG_SEVERITY` (errors only). Raises
    :class:`UnsupportedVariant` for a level this onnxruntime does not have.
    """
    import onnxruntime

    if not hasattr(onnxruntime.GraphOptimizationLevel, level):
        # ORT_ENABLE_LAYOUT is recent: an older onnxruntime skips that mode rather than fail it.
        raise UnsupportedVariant(f"onnxruntime {onnxruntime.__version__} has no {level} optimization level")
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, level)
    options.log_severity_level = LOG_SEVERITY
    if deterministic:
        options.use_deterministic_compute = True
    return options


def with_layers(call: Callable[..., Any], data: bytes, *, device: str, level: str, deterministic: bool,
                torch_scopes: Mapping[str, str] | None = None, torch_fused: Sequence[str] = ()) -> Callable[..., Any]:
    """``call`` carrying what ``--intermediates`` needs to record the model's layers: the model,
    and a session factory that makes its sessions as this variant's was made (device, optimization
    level, determinism); an export from torch also carries its module names."""

    def make_session(model: bytes, optimized_path: str | None) -> Any:
        return create_session(model, device=device, level=level, deterministic=deterministic,
                              optimized_path=optimized_path)[0]

    setattr(call, "onnx_bytes", data)  # noqa: B010 (an attribute of a function)
    setattr(call, "make_session", make_session)  # noqa: B010
    setattr(call, "torch_scopes", dict(torch_scopes or {}))  # noqa: B010
    setattr(call, "torch_fused", list(torch_fused))  # noqa: B010
    return call


def create_session(
    model: bytes,
    *,
    device: str,
    level: str = "ORT_ENABLE_ALL",
    deterministic: bool = False,
    optimized_path: str | None = None,
) -> tuple[onnxruntime.InferenceSession, dict[str, Any]]:
    """An ``InferenceSession`` for ``model`` on the provider for ``device``, and what it really used.

    ``level`` is a ``GraphOptimizationLevel`` member name. ``deterministic`` turns on
    ``use_deterministic_compute`` and, on CUDA, turns TF32 off (the CUDA provider's default is on)
    and chooses convolution algorithms by heuristic instead of timing them. Raises
    :class:`UnsupportedVariant` when the provider lacks a kernel the model needs, or when the
    CUDA provider was asked for and ONNX Runtime quietly fell back to the CPU.
    """
    import onnxruntime

    kind, index = split_device(device)
    # Errors only: the warning printed when a provider cannot start is checked below instead.
    options = session_options(level, deterministic=deterministic)
    if optimized_path is not None:  # where ONNX Runtime saves the graph its optimizer made
        options.optimized_model_filepath = optimized_path
    providers: list[Any]
    if kind == "cuda":
        cuda_options: dict[str, Any] = {"device_id": index or 0}
        if deterministic:
            cuda_options.update(use_tf32="0", cudnn_conv_algo_search="HEURISTIC")
        providers = [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    try:
        session = onnxruntime.InferenceSession(model, sess_options=options, providers=providers)
    except Exception as exc:
        raise _translate(exc, device) from exc
    used = session.get_providers()
    if kind == "cuda" and "CUDAExecutionProvider" not in used:
        raise UnsupportedVariant("onnxruntime could not start its CUDA provider (CUDA or cuDNN libraries missing?)")
    info: dict[str, Any] = {
        "onnxruntime.providers": used,
        "onnxruntime.graph_optimization_level": level,
        "onnxruntime.use_deterministic_compute": bool(options.use_deterministic_compute),
        # 0 means ONNX Runtime's default: one thread per physical core. Reductions split across
        # threads, so the count can matter for the bits.
        "onnxruntime.intra_op_num_threads": options.intra_op_num_threads,
    }
    if kind == "cuda":
        given = session.get_provider_options().get("CUDAExecutionProvider", {})
        for key in ("device_id", "use_tf32", "cudnn_conv_algo_search"):
            if key in given:
                info[f"onnxruntime.cuda.{key}"] = given[key]
    return session, info


def _translate(exc: Exception, device: str) -> Exception:
    """A missing kernel becomes :class:`UnsupportedVariant`; anything else is raised as it is."""
    match = _MISSING_KERNEL.search(str(exc))
    if match is None:
        return exc
    op, version = match.groups()
    short = "CPU" if provider_for(device) == "CPUExecutionProvider" else "CUDA"
    return UnsupportedVariant(f"onnxruntime's {short} provider has no kernel for {op}({version}) at this model's dtype")


def ort_dtype_name(type_string: str) -> str | None:
    """detharness's dtype name for ONNX Runtime's ``tensor(float)``-style type string, or None."""
    return _ORT_TYPES.get(type_string)


def run_session(session: onnxruntime.InferenceSession, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run ``session`` with ``arrays`` as its inputs in order; the outputs as numpy, in graph order.

    Goes through an IO binding with every output bound to host memory: the same code runs every
    provider, and bfloat16 moves in both directions (ONNX Runtime's numpy conversion refuses
    ml_dtypes bfloat16 arrays, so they travel as uint16 bits labelled with the ONNX type).
    """
    import onnxruntime

    inputs = session.get_inputs()
    if len(arrays) != len(inputs):
        raise CaseError(
            f"the model takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}), the case gives {len(arrays)}"
        )
    binding = session.io_binding()
    # OrtValues made from numpy borrow the array's memory: keep the arrays alive through the run.
    keep: list[np.ndarray] = []
    for meta, array in zip(inputs, arrays, strict=True):
        array = np.require(array, requirements="C")  # ascontiguousarray makes 0-d arrays 1-d
        keep.append(array)
        if dtype_name(array.dtype) == "bfloat16":
            value = onnxruntime.OrtValue.ortvalue_from_numpy_with_onnx_type(array.view(np.uint16), _ONNX_BFLOAT16)
        else:
            value = onnxruntime.OrtValue.ortvalue_from_numpy(array)
        binding.bind_ortvalue_input(meta.name, value)
    for meta in session.get_outputs():
        binding.bind_output(meta.name, "cpu")
    session.run_with_iobinding(binding)
    binding.synchronize_outputs()
    return [_ortvalue_to_numpy(value) for value in binding.get_outputs()]


def _ortvalue_to_numpy(value: onnxruntime.OrtValue) -> np.ndarray:
    name = ort_dtype_name(value.data_type())
    if name == "bfloat16":
        # OrtValue.numpy() has no numpy type for bfloat16: copy the host bytes out instead.
        raw = ctypes.string_at(value.data_ptr(), value.tensor_size_in_bytes())
        return np.frombuffer(raw, dtype=np.uint16).view(numpy_dtype("bfloat16")).reshape(value.shape()).copy()
    return np.array(value.numpy(), copy=True)


def model_bytes(obj: Any) -> tuple[bytes, int | None]:
    """Serialized bytes and opset for a ``ModelProto``, bytes, or a model file path.

    A path is loaded with :func:`~detharness.backends.onnx_model.load_model_safely`. A
    ``ModelProto`` that still refers to external data is refused: ONNX Runtime would resolve those
    locations against the working directory, outside any check. Load it with
    ``load_model_safely``, or return its path.
    """
    if isinstance(obj, (str, os.PathLike)):
        obj = load_model_safely(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        try:
            import onnx
        except ImportError:
            return data, None
        model = onnx.load_from_string(data)
    elif type(obj).__name__ == "ModelProto" and hasattr(obj, "SerializeToString"):
        model = obj
        data = b""
    else:
        raise CaseError(
            f"an onnxruntime implementation must build an onnx.ModelProto, its bytes or a model path, not {type(obj).__name__}"
        )
    external = external_tensors(model)
    if external:
        raise UsageError(
            f"tensor {external[0].name!r} of the model still refers to external data; load the model with "
            "detharness.backends.load_model_safely() or return its path"
        )
    return data or model.SerializeToString(), model_opset(model)


class OnnxRuntimeBackend(Backend):
    """Runs ONNX models in ONNX Runtime on the CPU provider, or the CUDA provider where present.

    ``devices()`` lists ``cuda`` only when ``CUDAExecutionProvider`` is available. Inputs stay
    numpy arrays until the call, which moves them into the session (bfloat16 included).
    """

    name = "onnxruntime"
    import_name = "onnxruntime"
    distributions = ("onnxruntime", "onnxruntime-gpu")
    install_hint = 'pip install "detharness[onnx]" -c ci/pins/cpu.txt'
    modes = tuple(OPTIMIZATION_LEVELS)
    default_modes = ("opt:all",)
    module_modes = tuple(OPTIMIZATION_LEVELS)
    # ONNX Runtime has no complex tensors (its loader refuses tensor(complex64)).
    dtypes = tuple(d for d in ALL_DTYPES if not d.startswith("complex"))

    def _load_framework(self) -> None:
        import onnxruntime  # noqa: F401

    def _read_switches(self) -> dict[str, Any]:
        return {"onnxruntime.use_deterministic_compute": self._deterministic}

    def _fingerprint(self) -> dict[str, Any]:
        import onnxruntime

        result: dict[str, Any] = {
            "onnxruntime.version": onnxruntime.__version__,
            "onnxruntime.available_providers": onnxruntime.get_available_providers(),
            "onnxruntime.device": onnxruntime.get_device(),
        }
        try:
            import importlib.metadata

            result["onnx.version"] = importlib.metadata.version("onnx")
        except importlib.metadata.PackageNotFoundError:
            pass
        return result

    def _devices(self) -> list[str]:
        import onnxruntime

        found = ["cpu"]
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            found.append("cuda")
        return found

    def _supports(self, spec: VariantSpec) -> tuple[bool, str]:
        return provider_supports(spec.device, spec.dtype)

    def _to_native(self, array: np.ndarray, device: str) -> Any:
        # The session copies to the device when it runs; until then inputs stay on the host.
        return np.require(array, requirements="C")  # ascontiguousarray makes 0-d arrays 1-d

    def _seed(self, seed: int) -> None:
        import onnxruntime

        # The seed of random ops (RandomNormal...) that carry no seed attribute of their own.
        onnxruntime.set_seed(seed)

    def _prepare(self, obj: Any, spec: VariantSpec, example_inputs: tuple[Any, ...]) -> Callable[..., Any]:
        data, opset = model_bytes(obj)
        session, info = create_session(
            data, device=spec.device, level=OPTIMIZATION_LEVELS[spec.mode], deterministic=self.deterministic
        )
        inputs = session.get_inputs()
        if example_inputs:
            # Without example inputs (a direct call) the counts and dtypes are checked by the run.
            if len(example_inputs) != len(inputs):
                raise CaseError(
                    f"the model takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}), "
                    f"the case gives {len(example_inputs)}"
                )
            for meta, array in zip(inputs, example_inputs, strict=True):
                expected = ort_dtype_name(meta.type)
                given = dtype_name(np.asarray(array).dtype)
                if expected is not None and expected != given:
                    # A model has fixed input types; a variant of another dtype cannot feed it.
                    raise UnsupportedVariant(f"the model's input {meta.name!r} is {expected}, not {given}")
        names = [meta.name for meta in session.get_outputs()]
        self._run_info = {**info, "onnx.opset": opset, "onnxruntime.inputs": [meta.name for meta in inputs]}

        def call(*arrays: np.ndarray) -> dict[str, np.ndarray]:
            return dict(zip(names, run_session(session, arrays), strict=True))

        return with_layers(call, data, device=spec.device, level=OPTIMIZATION_LEVELS[spec.mode],
                           deterministic=self.deterministic)
