"""Environment fingerprint: what about this machine and stack can change the numbers, and how two differ.

A fingerprint is a flat dict of dotted keys (``cpu.isa``, ``blas.architecture``, ``env.OMP_NUM_THREADS``)
whose values are JSON scalars or lists of strings, so two fingerprints diff key by key and hash to a
stable id. This module records only what needs no ML framework (it imports numpy, ml_dtypes and
threadpoolctl); each backend worker adds its framework's keys (``torch.version``,
``torch.cpu_capability``) with :func:`merge`, inside the process that imported the framework.

Privacy: a fingerprint travels inside bundles that CI uploads and reports that teams publish, so it
holds no host names, user names or paths. Every string value goes through :func:`redact`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import ml_dtypes
import numpy as np
import threadpoolctl

REDACTED_PATH = "<redacted path>"

# Variables always recorded, as None when unset, so a diff shows "set here, unset there". Each one
# is known to change results: thread counts change how reductions split; the *_CPU_ISA / CPU_TYPE /
# CORETYPE ones pick the kernels; the fpmath, TF32, matmul-precision and x64 ones change the
# arithmetic itself; the determinism ones pick the algorithms; PYTHONHASHSEED orders sets, and so
# the order of any sum over one.
NUMERICS_VARIABLES: tuple[str, ...] = (
    # PyTorch
    "ATEN_CPU_CAPABILITY",
    "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",
    "TORCH_BLAS_PREFER_CUBLASLT",
    # OpenMP and BLAS threading
    "OMP_NUM_THREADS",
    "OMP_DYNAMIC",
    "OMP_SCHEDULE",
    "MKL_NUM_THREADS",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_DEBUG_CPU_TYPE",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "GOTO_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "KMP_DETERMINISTIC_REDUCTION",
    # oneDNN, used by torch, TensorFlow and onnxruntime on CPU
    "DNNL_MAX_CPU_ISA",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_DEFAULT_FPMATH_MODE",
    "ONEDNN_DEFAULT_FPMATH_MODE",
    # numpy's own SIMD dispatch
    "NPY_DISABLE_CPU_FEATURES",
    "NPY_ENABLE_CPU_FEATURES",
    # XLA / JAX
    "XLA_FLAGS",
    "JAX_ENABLE_X64",
    "JAX_DEFAULT_MATMUL_PRECISION",
    "JAX_DEFAULT_DTYPE_BITS",
    "JAX_NUMPY_DTYPE_PROMOTION",
    "JAX_DISABLE_JIT",
    "JAX_PLATFORMS",
    "JAX_DEFAULT_PRNG_IMPL",
    "JAX_THREEFRY_PARTITIONABLE",
    # TensorFlow
    "TF_ENABLE_ONEDNN_OPTS",
    "TF_DETERMINISTIC_OPS",
    "TF_CUDNN_DETERMINISTIC",
    "TF_XLA_FLAGS",
    # CUDA libraries
    "CUBLAS_WORKSPACE_CONFIG",
    "NVIDIA_TF32_OVERRIDE",
    # Python
    "PYTHONHASHSEED",
)

# Families recorded whenever one of their members is set: MKL and OpenBLAS read many variables, new
# ones appear with releases, and most of them pick kernels, thread counts or cache blockings.
NUMERICS_VARIABLE_PREFIXES: tuple[str, ...] = ("MKL_", "OPENBLAS_")
# Members of those families that change no result: how long OpenBLAS's idle threads spin before they
# sleep (the test suite sets it; two runs that differ only in it must share an environment id).
NOT_NUMERICS_VARIABLES: frozenset[str] = frozenset({"OPENBLAS_THREAD_TIMEOUT"})

# Keys left out of the environment id. ``cpu.count`` alone changes no result: what it changes are the
# default thread counts, and those are recorded as their own keys (``blas.threads``,
# ``openmp.threads``, a backend's intra-op threads), which stay in the id. A pool of "identical" CI
# runners often lands on hosts with different core counts, and these should share an id when their
# thread counts are pinned. Everything else recorded can change numbers, so it stays in the id.
VOLATILE_KEYS: frozenset[str] = frozenset({"cpu.count"})

# ISA flags that change which kernels numpy, BLAS, oneDNN and the frameworks run, spelled as Linux's
# /proc/cpuinfo spells them.
_X86_ISA_FLAGS: frozenset[str] = frozenset(
    {
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512dq",
        "avx512vl",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "avx_vnni",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
    }
)
_ARM_ISA_FLAGS: frozenset[str] = frozenset(
    {"neon", "asimd", "asimdhp", "asimddp", "fphp", "bf16", "i8mm", "sve", "sve2", "sme"}
)

# numpy's names for the same features, for machines without /proc/cpuinfo (macOS, Windows).
_NUMPY_FEATURE_TO_ISA_FLAG: dict[str, str] = {
    "SSE42": "sse4_2",
    "AVX": "avx",
    "AVX2": "avx2",
    "FMA3": "fma",
    "F16C": "f16c",
    "AVX512F": "avx512f",
    "AVX512BW": "avx512bw",
    "AVX512DQ": "avx512dq",
    "AVX512VL": "avx512vl",
    "AVX512VNNI": "avx512_vnni",
    "AVX512BF16": "avx512_bf16",
    "AVX512FP16": "avx512_fp16",
    "NEON": "neon",
    "ASIMD": "asimd",
    "ASIMDHP": "asimdhp",
    "ASIMDDP": "asimddp",
    "FPHP": "fphp",
    "SVE": "sve",
}

_ARCH_ALIASES: dict[str, str] = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}

# A token is a run of characters that are not separators in flag strings and path lists
# (``--xla_dump_to=/tmp/x``, ``/a:/b``, ``:4096:8``). ``<`` and ``>`` are separators too, so
# redacting an already redacted value changes nothing.
_TOKEN_CHARS = r"""[^\s=,;:"'<>|()]"""
_PATH_PATTERN = re.compile(
    # a quoted string holding a separator: a path that may contain spaces
    r""""[^"]*[/\\][^"]*"|'[^']*[/\\][^']*'"""
    # or, from the start of a token: an optional drive letter, then a token holding / or \, or ~
    rf"""|(?<!{_TOKEN_CHARS})(?:[A-Za-z]:(?=[/\\]))?(?:~{_TOKEN_CHARS}*|{_TOKEN_CHARS}*[/\\]{_TOKEN_CHARS}*)"""
)
_WHOLE_PATH_START = re.compile(r"""\s*(?:[/\\~]|[A-Za-z]:[/\\]|\.{1,2}[/\\])""")


def redact(value: Any) -> Any:
    """``value`` with anything that looks like a file system path replaced by ``<redacted path>``.

    A string that starts with a path (``/home/alice/x``, ``~/x``, ``C:\\Users\\x``, ``./x``) is
    replaced whole, spaces and all. In any other string each path-like token is replaced and the
    rest kept, so ``XLA_FLAGS="--xla_dump_to=/tmp/x --xla_cpu_enable_fast_math=false"`` still shows
    the flag that changes numbers. A token is path-like if it holds ``/`` or ``\\`` or starts with
    ``~``: no value that changes numerics needs either, so erring towards redaction loses nothing.
    Lists, tuples and dicts are redacted element by element; other values are returned unchanged.
    """
    if isinstance(value, str):
        if _WHOLE_PATH_START.match(value):
            return REDACTED_PATH
        return _PATH_PATTERN.sub(REDACTED_PATH, value)
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    if isinstance(value, Mapping):
        return {key: redact(item) for key, item in value.items()}
    return value


def fingerprint() -> dict[str, Any]:
    """The fingerprint of this process's machine and numpy stack, with flat dotted keys.

    Call it in a process that has imported no ML framework: threadpoolctl sees only the libraries
    loaded so far, and the frameworks' BLAS and OpenMP are recorded by their own workers.
    """
    fp: dict[str, Any] = {
        "python.version": platform.python_version(),
        "python.implementation": platform.python_implementation(),
        "os.system": platform.system(),
        "os.release": platform.release(),
        "os.libc": _libc(),
        "machine.arch": _arch(),
        # Set by detharness's emulator launcher (``aarch64 qemu-7.2.22 cpu=neoverse-n1``), so that no
        # report takes an emulated environment for silicon; None (left out of the id) on real hardware.
        "machine.emulated": os.environ.get("DETHARNESS_EMULATED") or None,
        "cpu.model": _cpu_model(),
        "cpu.count": os.cpu_count(),
        "cpu.isa": _cpu_isa(),
        "numpy.version": np.__version__,
        **_numpy_simd(),
        "ml_dtypes.version": ml_dtypes.__version__,
        **_blas_and_openmp(),
        **_numerics_variables(os.environ),
    }
    return {key: redact(value) for key, value in fp.items()}


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with the keys of ``extra`` added (``extra`` wins on a clash), values redacted.

    Backend workers use it to add their framework's keys; redacting here too means a worker that
    records a library location by mistake still leaks no path.
    """
    for key in extra:
        if not isinstance(key, str) or "." not in key:
            raise ValueError(f"fingerprint keys are dotted strings like 'torch.version', got {key!r}")
    return {**base, **{key: redact(value) for key, value in extra.items()}}


def environment_id(fp: Mapping[str, Any]) -> str:
    """The sha256 hex digest of ``fp``'s canonical JSON, without volatile keys or unset values.

    Unset values (None) are left out so that a variable added to the recorded list by a newer
    detharness does not change the id of environments where it is unset; set against unset still
    changes the id.
    """
    stable = {key: value for key, value in fp.items() if key not in VOLATILE_KEYS and value is not None}
    canonical = json.dumps(stable, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def short_id(fp: Mapping[str, Any]) -> str:
    """The first 12 hex digits of :func:`environment_id`, for display."""
    return environment_id(fp)[:12]


def diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Each key whose values differ, mapped to ``[a_value, b_value]``, sorted by key.

    A key missing on one side counts as None there, like an unset variable: a fingerprint from an
    older detharness that did not record a key then differs only where the newer one found a value.
    """
    return {key: [a.get(key), b.get(key)] for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)}


# Groups in the order a reader looks for them; any other prefix (a framework's) comes after, by
# name, and the variables last.
_GROUP_ORDER: tuple[str, ...] = ("python", "os", "machine", "cpu", "gpu", "numpy", "ml_dtypes", "blas", "openmp")


def format_fingerprint(fp: Mapping[str, Any], *, with_id: bool = False) -> str:
    """Text for ``detharness env``: aligned ``key  value`` lines, a blank line between prefixes.

    Lists print space-separated, unset values as ``(unset)``; ``with_id`` adds a first line with
    the short environment id.
    """

    def group_rank(prefix: str) -> tuple[int, str]:
        if prefix in _GROUP_ORDER:
            return (0, f"{_GROUP_ORDER.index(prefix):03d}")
        return (2, prefix) if prefix == "env" else (1, prefix)

    groups: dict[str, list[str]] = {}
    for key in fp:
        groups.setdefault(key.split(".", 1)[0], []).append(key)
    width = max((len(key) for key in fp), default=0)
    lines: list[str] = []
    if with_id:
        lines += [f"{'environment':<{width}}  {short_id(fp)}", ""]
    for prefix in sorted(groups, key=group_rank):
        for key in sorted(groups[prefix]):
            lines.append(f"{key:<{width}}  {format_value(fp[key])}".rstrip())
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def format_value(value: Any) -> str:
    """One fingerprint value as text: lists space-separated (``(none)`` when empty), None as ``(unset)``."""
    if value is None:
        return "(unset)"
    if isinstance(value, (list, tuple)):
        return " ".join(str(item) for item in value) if value else "(none)"
    return str(value)


def _arch() -> str:
    machine = platform.machine().lower()
    return _ARCH_ALIASES.get(machine, machine)


def _libc() -> str | None:
    name, version = platform.libc_ver()
    if name:
        return f"{name} {version}".strip()
    # musl and friends: libc_ver() only recognises glibc by scanning the interpreter binary.
    if sys.platform.startswith("linux"):
        try:
            loaders = os.listdir("/lib")
        except OSError:
            return None
        if any(entry.startswith("ld-musl") for entry in loaders):
            return "musl"
    return None


def _first_cpuinfo_block() -> dict[str, str]:
    """The fields of the first processor in /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    if fields:
                        break  # every processor repeats the same fields; one is enough
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        return {}
    return fields


def _sysctl(name: str) -> str | None:
    try:
        result = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=2, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def _cpu_model() -> str | None:
    cpuinfo = _first_cpuinfo_block()
    if "model name" in cpuinfo:
        return cpuinfo["model name"]
    if "cpu implementer" in cpuinfo and "cpu part" in cpuinfo:
        # ARM Linux names no model: implementer and part numbers identify the core design.
        return f"arm implementer {cpuinfo['cpu implementer']} part {cpuinfo['cpu part']}"
    if sys.platform == "darwin":
        brand = _sysctl("machdep.cpu.brand_string")
        if brand:
            return brand
    return platform.processor() or None


def _cpu_isa() -> list[str]:
    cpuinfo = _first_cpuinfo_block()
    flags = cpuinfo.get("flags") or cpuinfo.get("features")
    if flags is not None:
        wanted = _X86_ISA_FLAGS | _ARM_ISA_FLAGS
        return sorted(set(flags.split()) & wanted)
    return _cpu_isa_from_numpy()


def _cpu_isa_from_numpy() -> list[str]:
    # numpy detects the CPU's features on every platform (without AMX and SVE2); its names are
    # mapped to /proc/cpuinfo's so one machine reads the same however it is probed.
    features = _numpy_cpu_features()
    return sorted({flag for name, flag in _NUMPY_FEATURE_TO_ISA_FLAG.items() if features.get(name)})


def _numpy_umath() -> Any:
    """numpy's compiled core, which carries its CPU feature detection (the data np.show_runtime prints)."""
    try:
        return importlib.import_module("numpy._core._multiarray_umath")  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.26
        return importlib.import_module("numpy.core._multiarray_umath")


def _numpy_cpu_features() -> dict[str, bool]:
    return dict(getattr(_numpy_umath(), "__cpu_features__", {}))


def _numpy_simd() -> dict[str, Any]:
    """numpy's SIMD baseline and the dispatch targets this CPU really runs (np.show_runtime's "found")."""
    umath = _numpy_umath()
    features = _numpy_cpu_features()
    baseline: Iterable[str] = getattr(umath, "__cpu_baseline__", [])
    dispatch: Iterable[str] = getattr(umath, "__cpu_dispatch__", [])
    return {
        "numpy.simd.baseline": list(baseline),
        # Built targets the CPU lacks never run, and NPY_DISABLE_CPU_FEATURES switches found ones off
        # (numpy then reports them as absent), so only the found ones say what runs.
        "numpy.simd.dispatch": [target for target in dispatch if features.get(target)],
    }


def _blas_and_openmp() -> dict[str, Any]:
    infos = threadpoolctl.threadpool_info()
    blas = _numpys_blas([info for info in infos if info.get("user_api") == "blas"])
    openmp = sorted(
        (info for info in infos if info.get("user_api") == "openmp"), key=lambda info: str(info.get("internal_api"))
    )
    first_openmp = openmp[0] if openmp else {}
    return {
        # Library names only (internal_api: openblas, mkl, blis, ...); file paths never leave here.
        "blas.library": blas.get("internal_api"),
        "blas.version": blas.get("version"),
        "blas.threads": blas.get("num_threads"),
        "blas.architecture": blas.get("architecture"),
        "openmp.library": first_openmp.get("internal_api"),
        "openmp.threads": first_openmp.get("num_threads"),
    }


def _numpys_blas(blas_infos: list[dict[str, Any]]) -> dict[str, Any]:
    """The BLAS numpy itself uses, when others (a framework's MKL) are loaded beside it."""
    if len(blas_infos) <= 1:
        return blas_infos[0] if blas_infos else {}
    numpy_dir = os.path.dirname(os.path.realpath(np.__file__))
    # Wheels vendor their BLAS in numpy.libs/ or numpy/.dylibs/, next to or inside the package.
    vendored = (numpy_dir + os.sep, numpy_dir + ".libs" + os.sep)
    for info in blas_infos:
        if os.path.realpath(str(info.get("filepath", ""))).startswith(vendored):
            return info
    return sorted(blas_infos, key=lambda info: str(info.get("internal_api")))[0]


def _numerics_variables(environ: Mapping[str, str]) -> dict[str, Any]:
    names = set(NUMERICS_VARIABLES)
    names.update(name for name in environ
                 if name.startswith(NUMERICS_VARIABLE_PREFIXES) and name not in NOT_NUMERICS_VARIABLES)
    return {f"env.{name}": environ.get(name) for name in sorted(names)}
