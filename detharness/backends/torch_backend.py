"""PyTorch: eager on CPU and CUDA, and ONNX export run in ONNX Runtime.

Modes:

``eager``
    The implementation is called under ``torch.inference_mode()``. A module built by a module
    builder is moved to the device, cast to the variant's dtype when that is a float dtype, and
    put in ``eval()`` mode.
``onnx``
    Module builders only. The module is exported with the dynamo exporter (``torch.onnx.export``'s
    default since torch 2.9) on the CPU with the example inputs, and the ONNX model runs in ONNX
    Runtime on the provider for the device. The outputs keep the structure the module returns
    (a dict keeps its keys), so they pair with the ``eager`` outputs.
``onnx:torchscript``
    The same with the legacy TorchScript exporter (``dynamo=False``), to see what the choice of
    exporter does to the numbers.

:meth:`TorchBackend.export_onnx` is the export these modes and the ONNX round trips share, and
:func:`quiet_export` the context that keeps the exporters' chatter off the terminal.

Why dynamo is the default (measured here, torch 2.13 CPU, onnxscript 0.7, onnxruntime 1.32):

- Speed: TorchScript exports a 3-layer MLP in 3 ms and a small conv net in 5 ms (30 ms for the
  first export in a process); dynamo takes 0.2-0.4 s each once its op registry is built
  (:func:`reused_onnx_registry`; 1.9 s for the first). It is paid once in ``prepare``, never in
  the timed call, and a cached export (:mod:`detharness.cache`) is not paid again.
- Robustness: both exported an MLP, conv+BatchNorm, LayerNorm, MultiheadAttention, an LSTM and a
  dict output, in float32 and float16, within 1.2e-7 of eager. Where they differ dynamo is the
  safer one: a data-dependent branch (``x * 2 if x.sum() > 0 else x - 1``) fails to export with
  dynamo, while TorchScript traces one branch with only a warning and then gives wrong outputs
  (off by 1.3) for inputs that take the other; ``index_add`` with repeated indices exports with
  dynamo and is refused by TorchScript.
- It is what ``torch.onnx.export`` gives users since torch 2.9, so it is what they serve; the
  TorchScript exporter warns that it will be removed.

ONNX modes and dtypes: float32 and float16 run on the CPU provider. bfloat16 does not (its CPU
kernels are missing: :meth:`TorchBackend.supports` says so). float64 runs only where the provider
has the kernels: the CPU provider has no float64 Conv or Erf, and ``prepare`` then raises
:class:`UnsupportedVariant` naming the op. An export failure is an error of the variant, not a
skip: it is a finding about the model.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import re
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from detharness.backends.base import Backend, UnsupportedVariant, VariantSpec, split_device
from detharness.backends.onnx_model import model_opset
from detharness.dtypes import ALL_DTYPES, FLOAT_DTYPES, dtype_name, numpy_dtype, torch_dtype

if TYPE_CHECKING:
    import torch

#: The exporter each ONNX mode uses.
ONNX_EXPORTERS: dict[str, str] = {"onnx": "dynamo", "onnx:torchscript": "torchscript"}

# torch's fp32 precision controls (torch >= 2.9): (record key, backend attribute, op attribute).
_FP32_PRECISION: tuple[tuple[str, str, str], ...] = (
    ("torch.cuda.matmul.fp32_precision", "cuda", "matmul"),
    ("torch.cudnn.conv.fp32_precision", "cudnn", "conv"),
    ("torch.cudnn.rnn.fp32_precision", "cudnn", "rnn"),
    ("torch.mkldnn.matmul.fp32_precision", "mkldnn", "matmul"),
    ("torch.mkldnn.conv.fp32_precision", "mkldnn", "conv"),
)


class TorchBackend(Backend):
    """torch tensors on ``cpu`` and ``cuda`` (when ``torch.cuda.is_available()``).

    ``onnx_opset`` pins the opset of the ONNX modes; ``None`` keeps the exporter's default (which
    :meth:`run_info` records as ``onnx.opset`` either way).
    """

    name = "torch"
    import_name = "torch"
    distributions = ("torch",)
    install_hint = 'pip install "detharness[torch]" -c ci/pins/cpu.txt'
    modes = ("eager", *ONNX_EXPORTERS)
    default_modes = ("eager", "onnx")
    module_modes = tuple(ONNX_EXPORTERS)
    dtypes = ALL_DTYPES

    def __init__(self, *, onnx_opset: int | None = None) -> None:
        super().__init__()
        self.onnx_opset = onnx_opset

    @property
    def _torch(self) -> Any:
        import torch

        return torch

    # -- switches and fingerprint ---------------------------------------------------------------

    def _set_environment(self, deterministic: bool) -> None:
        # cuBLAS reads this when it creates its handle (the first CUDA matmul), so setting it after
        # importing torch still works; without it deterministic mode raises on CUDA. An empty
        # value counts as unset, as it does for cuBLAS; a value the user chose is kept.
        if deterministic and not os.environ.get("CUBLAS_WORKSPACE_CONFIG"):
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"

    def _set_deterministic(self) -> None:
        torch = self._torch
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        if hasattr(torch.backends.mkldnn, "deterministic"):  # torch >= 2.2
            torch.backends.mkldnn.deterministic = True
        # TF32 off for matmul and cuDNN: cuDNN's conv TF32 is on by default and changes fp32 results
        # on Ampere and newer. The legacy flags and the fp32_precision controls of torch >= 2.9
        # are both set, so the record is the same whichever API other code reads.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        for _, backend, op in _FP32_PRECISION:
            control = getattr(getattr(torch.backends, backend, None), op, None)
            if control is not None and hasattr(control, "fp32_precision"):
                control.fp32_precision = "ieee"

    def _read_switches(self) -> dict[str, Any]:
        torch = self._torch
        switches: dict[str, Any] = {
            "torch.deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "torch.deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "torch.cudnn.deterministic": bool(torch.backends.cudnn.deterministic),
            "torch.cudnn.benchmark": bool(torch.backends.cudnn.benchmark),
            "torch.cuda.matmul.allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "torch.cudnn.allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "torch.float32_matmul_precision": torch.get_float32_matmul_precision(),
            "torch.num_threads": torch.get_num_threads(),
            "torch.cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        }
        if hasattr(torch.backends.mkldnn, "deterministic"):
            switches["torch.mkldnn.deterministic"] = bool(torch.backends.mkldnn.deterministic)
        with contextlib.suppress(ImportError, AttributeError):
            import torch.utils.deterministic

            switches["torch.fill_uninitialized_memory"] = bool(torch.utils.deterministic.fill_uninitialized_memory)
        for key, backend, op in _FP32_PRECISION:
            control = getattr(getattr(torch.backends, backend, None), op, None)
            if control is not None and hasattr(control, "fp32_precision"):
                switches[key] = control.fp32_precision
        return switches

    def _fingerprint(self) -> dict[str, Any]:
        torch = self._torch
        config = torch.__config__.show()
        mkldnn = re.search(r"(?:MKL-DNN|oneDNN) v([\w.]+)", config)
        blas = re.search(r"BLAS_INFO=(\w+)", config)
        result: dict[str, Any] = {
            "torch.version": torch.__version__,
            "torch.git_version": getattr(torch.version, "git_version", None),
            # What torch really dispatches to: an unknown ATEN_CPU_CAPABILITY silently falls back
            # to the best one, so the variable alone says nothing.
            "torch.cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch.num_threads": torch.get_num_threads(),
            "torch.num_interop_threads": torch.get_num_interop_threads(),
            "torch.blas": blas.group(1) if blas else None,
            "torch.mkldnn.available": bool(torch.backends.mkldnn.is_available()),
            "torch.mkldnn.version": mkldnn.group(1) if mkldnn else None,
            "torch.openmp": bool(torch.backends.openmp.is_available()),
            "torch.cuda.version": torch.version.cuda,
            "torch.hip.version": getattr(torch.version, "hip", None),
            "torch.cudnn.version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "torch.cuda.available": bool(torch.cuda.is_available()),
        }
        if torch.cuda.is_available():
            result.update(_gpu_fingerprint(torch))
        # The onnx modes load ONNX Runtime (and the exporters' onnx and onnxscript) in this worker:
        # their versions are part of this environment whichever backend loads them.
        result.update(onnx_stack_versions())
        return result

    # -- devices, dtypes, arrays ------------------------------------------------------------------

    def _devices(self) -> list[str]:
        return ["cpu", "cuda"] if self._torch.cuda.is_available() else ["cpu"]

    def _supports(self, spec: VariantSpec) -> tuple[bool, str]:
        if spec.mode == "eager":
            return True, ""
        from detharness.backends.onnxruntime_backend import provider_supports

        needed = ["onnx", "onnxruntime"] + (["onnxscript"] if ONNX_EXPORTERS[spec.mode] == "dynamo" else [])
        missing = [m for m in needed if importlib.util.find_spec(m) is None]
        if missing:
            return False, f'the {spec.mode} mode needs {", ".join(missing)} (pip install "detharness[onnx]")'
        return provider_supports(spec.device, spec.dtype)

    def _to_native(self, array: np.ndarray, device: str) -> Any:
        torch = self._torch
        # Always a copy: torch.from_numpy shares memory, and an implementation that writes into
        # its input would change the arrays the runner hands the next variant or repeat.
        if dtype_name(array.dtype) == "bfloat16":
            # torch.from_numpy refuses ml_dtypes arrays: move the bits, then relabel them.
            tensor = torch.from_numpy(np.array(array.view(np.uint16), copy=True, order="C")).view(torch.bfloat16)
        else:
            tensor = torch.from_numpy(np.array(array, copy=True, order="C"))
        kind, _ = split_device(device)
        return tensor if kind == "cpu" else tensor.to(device)

    def to_numpy(self, value: Any) -> np.ndarray:
        """A numpy copy of a tensor (from any device); bfloat16 as ml_dtypes bfloat16, bit for bit."""
        torch = self._torch
        if not isinstance(value, torch.Tensor):
            return np.array(value, copy=True)
        tensor = value.detach()
        if tensor.layout != torch.strided:
            tensor = tensor.to_dense()
        tensor = tensor.resolve_conj().resolve_neg().cpu().contiguous()
        if tensor.dtype == torch.bfloat16:
            bits: np.ndarray = tensor.view(torch.uint16).numpy()
            return bits.view(numpy_dtype("bfloat16")).copy()
        return np.array(tensor.numpy(), copy=True)

    def _seed(self, seed: int) -> None:
        # Seeds the CPU generator and every CUDA device's generator.
        self._torch.manual_seed(seed)

    def synchronize(self, device: str, outputs: Any = None) -> None:
        kind, index = split_device(device)
        if kind == "cuda":
            self._torch.cuda.synchronize(index)

    # -- prepare ------------------------------------------------------------------------------------

    def _prepare(self, obj: Any, spec: VariantSpec, example_inputs: tuple[Any, ...]) -> Callable[..., Any]:
        torch = self._torch
        if spec.mode == "eager":
            return self._prepare_eager(obj, spec)
        if not isinstance(obj, torch.nn.Module):
            raise UnsupportedVariant(
                f"the {spec.mode} mode exports a torch.nn.Module; the builder returned {type(obj).__name__}"
            )
        return self._prepare_onnx(obj, spec, example_inputs)

    def _prepare_eager(self, obj: Any, spec: VariantSpec) -> Callable[..., Any]:
        torch = self._torch
        device, dtype = spec.device, spec.dtype
        if isinstance(obj, torch.nn.Module):
            obj = obj.to(device=torch.device(device))
            if dtype in FLOAT_DTYPES:
                obj = obj.to(dtype=torch_dtype(torch, dtype))
            obj.eval()
        if not callable(obj):
            raise TypeError(f"a torch implementation must be callable, not {type(obj).__name__}")
        fn = obj
        self._run_info = {"torch.mode": "eager", "torch.device": device, "torch.inference_mode": True}

        def call(*args: Any) -> Any:
            with torch.inference_mode():
                return fn(*args)

        return call

    def _prepare_onnx(
        self, module: torch.nn.Module, spec: VariantSpec, example_inputs: tuple[Any, ...]
    ) -> Callable[..., Any]:
        import onnx
        import onnxruntime
        from torch.utils import _pytree as pytree

        from detharness.backends import onnxruntime_backend as ort_backend

        torch = self._torch
        mode, device, dtype = spec.mode, spec.device, spec.dtype
        exporter = ONNX_EXPORTERS[mode]
        # Exported on the CPU whatever the device: the graph does not depend on it, and only ONNX
        # Runtime's provider (CUDA for "cuda") runs the numbers.
        module = module.to(device="cpu")
        if dtype in FLOAT_DTYPES:
            module = module.to(dtype=torch_dtype(torch, dtype))
        module.eval()
        inputs = tuple(t.detach().cpu() if isinstance(t, torch.Tensor) else t for t in example_inputs)
        with torch.no_grad():
            # One eager call gives the output structure to rebuild (a dict keeps its keys); the
            # exported graph only has a flat list of outputs.
            leaves, tree_spec = pytree.tree_flatten(module(*inputs))
        data, cache_status = self.export_onnx_cached(module, inputs, exporter)
        model = onnx.load_from_string(data)
        session, info = ort_backend.create_session(data, device=device, deterministic=self.deterministic)
        outputs = session.get_outputs()
        if len(outputs) != len(leaves):
            raise UnsupportedVariant(
                f"the {exporter} exporter gave {len(outputs)} outputs for the module's {len(leaves)} "
                "(non-tensor outputs are not exported)"
            )
        self._run_info = {
            "torch.mode": mode,
            "torch.onnx.exporter": exporter,
            "onnx.opset": model_opset(model),
            "onnxruntime.version": onnxruntime.__version__,
            **info,
            # Taken out of the info into the variant's own ``cache`` field (runner.variant_record).
            "cache": {"onnx_export": cache_status},
        }
        if exporter == "dynamo":
            # The dynamo exporter's translation to ONNX ops lives in onnxscript: its version
            # changes the graph as much as torch's does.
            import importlib.metadata

            self._run_info["onnxscript.version"] = importlib.metadata.version("onnxscript")
        to_numpy = self.to_numpy

        def call(*args: Any) -> Any:
            arrays = [to_numpy(a) for a in args]
            return pytree.tree_unflatten(ort_backend.run_session(session, arrays), tree_spec)

        if exporter != "dynamo":
            return ort_backend.with_layers(call, data, device=device, level="ORT_ENABLE_ALL",
                                           deterministic=self.deterministic)
        # The dynamo exporter names each node's torch module: the export's layers take the names
        # torch eager's have, and the modules it folded away (a batch norm into a conv) are listed.
        from detharness.backends import onnx_capture

        scopes = onnx_capture.torch_scopes(model)
        fused = onnx_capture.fused([name for name, _ in module.named_modules() if name], scopes)
        return ort_backend.with_layers(call, data, device=device, level="ORT_ENABLE_ALL",
                                       deterministic=self.deterministic, torch_scopes=scopes, torch_fused=fused)

    def export_onnx_cached(
        self,
        module: torch.nn.Module,
        inputs: tuple[Any, ...],
        exporter: str = "dynamo",
        *,
        opset: int | None = None,
    ) -> tuple[bytes, str]:
        """:meth:`export_onnx` through the persistent cache (:mod:`detharness.cache`): the bytes and
        ``"hit"``, ``"miss"`` (exported, then stored) or ``"off"`` (the cache is off, or the module
        could not be keyed: exported and not stored)."""
        from detharness import cache

        if not cache.enabled():
            return self.export_onnx(module, inputs, exporter, opset=opset), "off"
        try:
            entry = cache.key(self.onnx_export_key(module, inputs, exporter, opset=opset))
        except Exception:  # a module the key cannot describe is exported every time, never guessed at
            return self.export_onnx(module, inputs, exporter, opset=opset), "off"
        data = cache.get("onnx_export", entry)
        if data is not None:
            return data, "hit"
        data = self.export_onnx(module, inputs, exporter, opset=opset)
        with contextlib.suppress(OSError):  # a read-only or full cache folder costs the reuse, not the run
            cache.put("onnx_export", entry, data)
        return data, "miss"

    def onnx_export_key(
        self,
        module: torch.nn.Module,
        inputs: tuple[Any, ...],
        exporter: str = "dynamo",
        *,
        opset: int | None = None,
    ) -> dict[str, Any]:
        """Everything that can change what :meth:`export_onnx` gives for ``module`` and ``inputs``:
        the state_dict (names, dtypes, shapes, bytes), each submodule's class, train/eval flag and
        plain attributes, the source files of user code (the submodules' classes' files and every
        user file loaded here: what a builder may call), the inputs' dtypes and shapes, the exporter
        and opset, the versions of torch, onnx and onnxscript, and torch's CPU capability (the
        exporters fold Conv+BatchNorm differently under ``ATEN_CPU_CAPABILITY=default``). What a
        torch export cannot see (``XLA_FLAGS``) is not in it. Raises for what it cannot describe."""
        import hashlib
        import inspect
        import platform

        from detharness import __version__, cache

        torch = self._torch
        state = hashlib.sha256()
        layout = []
        for name, tensor in module.state_dict(keep_vars=False).items():
            t = tensor.detach().cpu().contiguous()
            layout.append([name, str(t.dtype), list(t.shape)])
            state.update(name.encode() + b"\0" + str(t.dtype).encode() + b"\0" + repr(tuple(t.shape)).encode() + b"\0")
            if t.numel():
                state.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        modules = []
        class_files: dict[str, str] = {}
        for name, sub in module.named_modules():
            cls = type(sub)
            file = inspect.getsourcefile(cls)
            if file is not None and not cache.is_library_file(file):
                class_files[file] = ""
            hooks = [getattr(h, "__qualname__", type(h).__qualname__)
                     for d in (sub._forward_pre_hooks, sub._forward_hooks) for h in d.values()]
            modules.append([name, f"{cls.__module__}.{cls.__qualname__}", sub.training, _plain_attributes(sub), hooks])
        example = [[str(t.dtype), list(t.shape)] if isinstance(t, torch.Tensor) else repr(t) for t in inputs]
        return {
            "kind": "torch.onnx.export",
            "exporter": exporter,
            "opset": self.onnx_opset if opset is None else opset,
            "state_dict": {"sha256": state.hexdigest(), "layout": layout},
            "modules": modules,
            "sources": cache.user_source_files(class_files),
            "inputs": example,
            "versions": {"torch": torch.__version__, **onnx_stack_versions(), "detharness": __version__,
                         "python": list(sys.version_info[:2])},
            # Read from torch itself at export time: what the exporter ran with.
            "torch.cpu_capability": torch.backends.cpu.get_cpu_capability(),
            # ARM's plain level and x86's ATEN_CPU_CAPABILITY=default both say DEFAULT.
            "machine": platform.machine(),
        }

    def export_onnx(
        self,
        module: torch.nn.Module,
        inputs: tuple[Any, ...],
        exporter: str = "dynamo",
        *,
        opset: int | None = None,
    ) -> bytes:
        """``module`` exported to ONNX in memory with ``exporter`` (``"dynamo"`` or ``"torchscript"``).

        The module is exported as it is (device, dtype, train or eval): the ``onnx`` modes move it
        to the CPU, cast it and call ``eval()`` first. ``inputs`` are the example inputs to trace
        with. ``opset`` pins the default-domain opset; None takes :attr:`onnx_opset`, and where
        that is None too the exporter's default. The exporters' chatter is silenced
        (:func:`quiet_export`); verbose output is off. Raises :class:`UnsupportedVariant` when this
        torch cannot choose the exporter; an export failure is raised as it is (a finding).
        """
        if exporter not in ("dynamo", "torchscript"):
            raise ValueError(f"unknown ONNX exporter {exporter!r}; use 'dynamo' or 'torchscript'")
        self.load()
        torch = self._torch
        opset_version = self.onnx_opset if opset is None else opset
        with quiet_export():
            try:
                if exporter == "torchscript":
                    buffer = io.BytesIO()
                    torch.onnx.export(
                        module, inputs, buffer, dynamo=False, opset_version=opset_version, verbose=False
                    )
                    return buffer.getvalue()
                with reused_onnx_registry(torch):
                    program = torch.onnx.export(module, inputs, dynamo=True, opset_version=opset_version,
                                                verbose=False)
            except TypeError as exc:
                if "dynamo" in str(exc):
                    raise UnsupportedVariant(
                        f"torch {torch.__version__} cannot choose the ONNX exporter: {exc}"
                    ) from exc
                raise
            assert program is not None
            return program.model_proto.SerializeToString()  # type: ignore[no-any-return]


def _plain_attributes(module: Any) -> dict[str, Any]:
    """A module's own attributes that are plain values (``eps``, ``kernel_size``, a flag a builder
    set): what changes an export besides its tensors and code. Other objects count by type only."""
    skip = {"training"}

    def plain(value: Any, depth: int = 0) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value if not isinstance(value, float) else repr(value)
        if depth < 3 and isinstance(value, (list, tuple)):
            return [type(value).__name__, [plain(v, depth + 1) for v in value]]
        if depth < 3 and isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return {k: plain(v, depth + 1) for k, v in sorted(value.items())}
        return f"<{type(value).__module__}.{type(value).__qualname__}>"

    return {k: plain(v) for k, v in sorted(vars(module).items())
            if not k.startswith("_") and k not in skip}


#: The dynamo exporter's op registries this process built, by what they were built from
#: (:func:`reused_onnx_registry`).
_ONNX_REGISTRIES: dict[Any, Any] = {}
#: Held for the block: the patch is one class attribute, and two threads exporting at once must not
#: leave each other's wrapper in place (torch's exporter is not thread-safe either).
_REGISTRY_LOCK = threading.RLock()


@contextlib.contextmanager
def reused_onnx_registry(torch: Any) -> Iterator[None]:
    """Within the block, the dynamo exporter builds its registry of ONNX functions once per process
    and opset instead of once per export.

    ``torch.onnx.export`` calls ``ONNXRegistry.from_torchlib`` on every export, which re-parses the
    source of every torchlib function: 0.4 of the 0.6-0.8 CPU-seconds a small model's export takes
    here (torch 2.13, onnxscript 0.7), about 24 s of the built-in library's run. The registry is a
    pure function of the installed torch and onnxscript, the opset and the op libraries loaded, and
    an export only reads it (``get_decomps``; ``register_op`` is called only for a
    ``custom_translation_table``, which detharness never passes). So one is kept per (arguments,
    ``torch.ops.loaded_libraries``, torchvision imported or not), and the exported bytes are
    unchanged (tested, model by model). The patch is undone when the block ends; a torch without
    this registry, or a call whose arguments cannot be keys, builds as torch does.
    """
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:
        yield
        return
    cls: Any = getattr(_registration, "ONNXRegistry", None)
    with _REGISTRY_LOCK:  # held for the block: no other export's wrapper is in place meanwhile
        original = vars(cls).get("from_torchlib") if isinstance(cls, type) else None
        if not isinstance(original, classmethod):
            yield
            return
        build = original.__func__

        def from_torchlib(registry_cls: Any, *args: Any, **kwargs: Any) -> Any:
            key = (registry_cls, args, tuple(sorted(kwargs.items())),
                   frozenset(getattr(torch.ops, "loaded_libraries", ())), "torchvision" in sys.modules)
            try:
                registry = _ONNX_REGISTRIES.get(key)
            except TypeError:  # an argument that cannot be a key: build as torch does
                return build(registry_cls, *args, **kwargs)
            if registry is None:
                registry = _ONNX_REGISTRIES[key] = build(registry_cls, *args, **kwargs)
            return registry

        cls.from_torchlib = classmethod(from_torchlib)
        try:
            yield
        finally:
            cls.from_torchlib = original


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Silence the exporters' API chatter (deprecations, "torchvision is not installed" logs).

    For ``torch.onnx.export`` and ``torch.export.export``: the loggers of torch's exporters,
    onnxscript and onnx_ir are raised to ERROR, and FutureWarning and DeprecationWarning are
    ignored, for the duration of the block; both are put back after it. Tracer warnings stay: they
    say the export may not match eager, which is the point of the ONNX modes.
    """
    # onnxscript's optimizer and onnx_ir log every pass they skip at WARNING ("Skipping constant
    # folding ..."), which reads like a problem in a run's output though nothing is wrong.
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            # An RNN's flat weights are plain attributes; the export notes it and stays correct.
            warnings.filterwarnings("ignore", message=r"The tensor attributes .* were assigned during export")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


#: Fingerprint key -> the distributions that install it, in the order they are looked for: the
#: CPU wheel, then the accelerated ones (they install the same ``onnxruntime`` package).
ONNX_STACK: dict[str, tuple[str, ...]] = {
    "onnx.version": ("onnx",),
    "onnxscript.version": ("onnxscript",),
    "onnxruntime.version": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                            "onnxruntime-qnn", "onnxruntime-rocm", "onnxruntime-training"),
}


def onnx_stack_versions() -> dict[str, str]:
    """The installed versions of onnx, onnxscript and onnxruntime, from package metadata.

    Read without importing them (importing onnxruntime costs a worker's start-up a second), so the
    fingerprint is the same whether or not a variant has loaded them yet. What is not installed is
    left out; the same keys and values as the onnxruntime backend's fingerprint, so the two merge.
    """
    import importlib.metadata  # here, not at import: see base._distribution_version

    found: dict[str, str] = {}
    for key, distributions in ONNX_STACK.items():
        for distribution in distributions:
            try:
                found[key] = importlib.metadata.version(distribution)
            except importlib.metadata.PackageNotFoundError:
                continue
            break
    return found


def _gpu_fingerprint(torch: Any) -> dict[str, Any]:
    """GPU keys for device 0 (name, capability, SM count, memory, driver); never fails."""
    result: dict[str, Any] = {"gpu.count": torch.cuda.device_count()}
    try:
        props = torch.cuda.get_device_properties(0)
        result.update(
            {
                "gpu.name": props.name,
                "gpu.capability": f"{props.major}.{props.minor}",
                "gpu.sm_count": props.multi_processor_count,
                "gpu.memory": int(props.total_memory),
            }
        )
    except Exception as exc:  # a broken driver must not stop the run: say so in the record
        result["gpu.error"] = f"{type(exc).__name__}: {exc}"
    driver = _nvidia_driver_version()
    if driver is not None:
        result["gpu.driver"] = driver
    return result


def _nvidia_driver_version() -> str | None:
    """The NVIDIA driver version through NVML (nvidia-ml-py) or ``nvidia-smi``; None if neither works."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
            return version.decode() if isinstance(version, bytes) else str(version)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML, or no driver behind it: try nvidia-smi
        pass
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if lines else None
