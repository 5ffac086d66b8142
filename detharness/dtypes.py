"""Dtype names across numpy, ml_dtypes, torch, jax and onnxruntime.

detharness names a dtype by numpy's name for it (``float32``, ``int64``, ``bool``), with
``bfloat16`` taken from ml_dtypes. Framework dtypes are converted by name, and the framework module
is passed in by the caller so this module never imports torch or jax.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from detharness.errors import DtypeError

FLOAT_DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32", "float64")
INT_DTYPES: tuple[str, ...] = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
OTHER_DTYPES: tuple[str, ...] = ("bool", "complex64", "complex128")
ALL_DTYPES: tuple[str, ...] = FLOAT_DTYPES + INT_DTYPES + OTHER_DTYPES

_NUMPY: dict[str, np.dtype[Any]] = {name: np.dtype(name) for name in ALL_DTYPES if name != "bfloat16"}
_NUMPY["bfloat16"] = np.dtype(ml_dtypes.bfloat16)

# Unsigned integer of the same width: the view used to move bfloat16 through frameworks that
# refuse it (numpy has no native bfloat16; torch.from_numpy rejects ml_dtypes arrays).
BITS_VIEW: dict[str, str] = {"float16": "uint16", "bfloat16": "uint16", "float32": "uint32", "float64": "uint64"}


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype for a detharness dtype name."""
    try:
        return _NUMPY[name]
    except KeyError:
        raise DtypeError(f"unknown dtype {name!r}; known: {', '.join(ALL_DTYPES)}") from None


def dtype_name(dtype: Any) -> str:
    """The detharness name of a numpy dtype (or anything numpy.dtype accepts)."""
    dt = np.dtype(dtype)
    if dt == _NUMPY["bfloat16"]:
        return "bfloat16"
    if dt.kind in "US":
        return "str"
    if dt.kind == "O":
        return "object"
    name: str = dt.name
    if name not in _NUMPY:
        raise DtypeError(f"dtype {name!r} is not supported")
    return name


def torch_dtype(torch: Any, name: str) -> Any:
    """The torch dtype for a detharness dtype name (``torch`` is the imported module)."""
    try:
        return getattr(torch, name)
    except AttributeError:
        raise DtypeError(f"torch has no dtype {name!r}") from None


def cast_floats(array: np.ndarray, name: str) -> np.ndarray:
    """Cast a floating array to the dtype ``name``; integers, bools and strings are left alone."""
    if array.dtype.kind == "f" or array.dtype == _NUMPY["bfloat16"]:
        return array.astype(numpy_dtype(name), copy=False)
    return array


def bitwise_equal(a: Any, b: Any) -> bool:
    """Same dtype, shape and bytes: NaNs with equal bits are equal, -0.0 differs from 0.0."""
    x, y = np.asarray(a), np.asarray(b)
    return bool(x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes())
