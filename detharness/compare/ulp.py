"""Units in the last place: how many representable floats lie between two values.

The count comes from the *ordinal* of a float: its bit pattern read as a sign-magnitude integer and
turned into a two's-complement one, so that consecutive floats have consecutive ordinals. Then

- ``+0`` and ``-0`` share ordinal 0, so they are 0 apart;
- the largest finite value and the infinity of its sign are neighbours, 1 apart;
- subnormals are ordinary neighbours, counted exactly;
- the distance between two ordinals of a ``w``-bit float always fits an unsigned ``w``-bit integer
  (the widest gap, -inf to +inf, is below ``2**w``), so distances are computed in the unsigned
  type of the float's own width and only widened at the end. That keeps float32 work in 32-bit
  lanes, and avoids float64 ordinals' differences overflowing int64.

NaN has no place on that line. ``ulp_distance`` says NaN and NaN are 0 apart, whatever their
payloads (a NaN where the reference has a NaN is agreement), and NaN against any number is the
largest uint64, so that no finite ULP budget can ever accept it.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from detharness.errors import DtypeError

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)

# The float dtypes ULP distances are defined for, mapped to the signed and unsigned integers of
# the same width: the signed one holds ordinals, the unsigned one distances.
_SIGNED_OF_WIDTH: dict[int, np.dtype[Any]] = {2: np.dtype(np.int16), 4: np.dtype(np.int32), 8: np.dtype(np.int64)}
_UNSIGNED_OF_WIDTH: dict[int, np.dtype[Any]] = {2: np.dtype(np.uint16), 4: np.dtype(np.uint32), 8: np.dtype(np.uint64)}

NAN_VS_NUMBER_DISTANCE = np.uint64(np.iinfo(np.uint64).max)


def is_ulp_float(dtype: np.dtype[Any]) -> bool:
    """Whether ``dtype`` is one of the float formats with ULP distances: float16/32/64 or bfloat16."""
    return dtype == BFLOAT16 or (dtype.kind == "f" and dtype.itemsize in (2, 4, 8))


def _float_name(dtype: np.dtype[Any]) -> str:
    return "bfloat16" if dtype == BFLOAT16 else dtype.name


def _require_ulp_float(array: np.ndarray, role: str) -> None:
    if not is_ulp_float(array.dtype):
        raise DtypeError(
            f"ulp_distance needs float16, bfloat16, float32 or float64 arrays; {role} is {_float_name(array.dtype)}"
        )


def _native(array: np.ndarray) -> np.ndarray:
    """The array in native byte order, so that its bits can be read as integers."""
    if array.dtype.byteorder not in ("=", "|") and not array.dtype.isnative:
        return array.astype(array.dtype.newbyteorder("="))
    return array


def native_ordinals(values: np.ndarray, out: np.ndarray | None = None, scratch: np.ndarray | None = None) -> np.ndarray:
    """Ordinals in the signed integer type of the float's own width (int16, int32 or int64).

    Negative floats have the sign bit set and their magnitude in the remaining bits; their ordinal
    is minus that magnitude. Branch-free: ``fill`` is all ones for negatives (an arithmetic shift of
    the sign), and ``(bits ^ (fill >>> 1)) - fill`` is ``-magnitude`` there and ``bits`` elsewhere.
    (``np.where`` on the sign costs ten times as much: random signs defeat branch prediction.)
    NaNs get an ordinal too (beyond the infinities); callers that care treat them apart.
    ``out`` and ``scratch``, arrays of that signed type and shape, spare the allocations.
    """
    signed = _native(values).view(_SIGNED_OF_WIDTH[values.dtype.itemsize])
    fill = np.right_shift(signed, 8 * signed.dtype.itemsize - 1, out=scratch)
    ordinals: np.ndarray = np.bitwise_and(fill, signed.dtype.type(np.iinfo(signed.dtype).max), out=out)
    np.bitwise_xor(ordinals, signed, out=ordinals)
    np.subtract(ordinals, fill, out=ordinals)
    return ordinals


def native_distance(
    first: np.ndarray, second: np.ndarray, workspace: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """Ordinal distance in the unsigned type of the floats' width, NaNs not treated specially.

    ``max - min`` of the signed ordinals can exceed the signed range, but the true value is below
    ``2**width``, so the wrapped difference read as unsigned is exact. ``workspace``, three arrays
    of the signed type and shape, spares the allocations (the result is a view of the first).
    """
    result, scratch, other = workspace if workspace is not None else (None, None, None)
    first_ordinals = native_ordinals(first, out=result, scratch=scratch)
    second_ordinals = native_ordinals(second, out=other, scratch=scratch)
    larger = np.maximum(first_ordinals, second_ordinals, out=scratch)
    np.minimum(first_ordinals, second_ordinals, out=first_ordinals)
    np.subtract(larger, first_ordinals, out=first_ordinals)
    return first_ordinals.view(_UNSIGNED_OF_WIDTH[first.dtype.itemsize])


def float_to_ordinal(values: Any) -> np.ndarray:
    """The ordinal of each float: an int64 array where neighbouring floats differ by exactly 1.

    ``+0`` and ``-0`` both map to 0; the infinities map one past the largest finite magnitudes.
    NaNs map beyond the infinities (by payload): do not read distances involving them.
    Differences of float64 ordinals can overflow int64 (the full range needs 64 unsigned bits);
    use :func:`ulp_distance` for distances.
    """
    array = np.asarray(values)
    _require_ulp_float(array, "the argument")
    # ufuncs with out= need arrays, and a 0-d input would give scalars: work on a flat copy.
    return native_ordinals(array.reshape(-1)).astype(np.int64).reshape(array.shape)


def ulp_distance(a: Any, b: Any) -> np.ndarray:
    """How many representable values of their common float dtype lie between ``a`` and ``b``.

    ``a`` and ``b`` are arrays (or anything ``numpy.asarray`` takes) of one float dtype: float16,
    bfloat16 (ml_dtypes), float32 or float64. They broadcast against each other as in numpy.
    The result is a uint64 array of the broadcast shape:

    - ``+0`` and ``-0`` are 0 apart, and each is 1 from the smallest subnormal of either sign;
    - NaN and NaN are 0 apart whatever their payloads; NaN and any number are ``2**64 - 1`` apart,
      so no finite budget accepts a NaN where a number was expected;
    - an infinity is 1 from the largest finite value of its sign.

    Two different dtypes raise :class:`~detharness.errors.DtypeError`: a distance in float16 steps
    and one in float64 steps are different quantities, so round one side first (``compare`` does
    that for you, rounding the reference to the candidate's dtype).
    """
    first = np.asarray(a)
    second = np.asarray(b)
    _require_ulp_float(first, "the first argument")
    _require_ulp_float(second, "the second argument")
    if first.dtype != second.dtype and not (first.dtype.newbyteorder("=") == second.dtype.newbyteorder("=")):
        raise DtypeError(
            f"ulp_distance needs two arrays of one float dtype, got {_float_name(first.dtype)} and "
            f"{_float_name(second.dtype)}; cast one to the other first "
            "(compare() judges mixed dtypes by rounding the reference to the candidate's dtype)"
        )
    first, second = np.broadcast_arrays(_native(first), _native(second))
    shape = first.shape
    # ufuncs with out= need arrays, and 0-d inputs would give scalars: work on flat copies.
    first, second = first.reshape(-1), second.reshape(-1)
    distance = native_distance(first, second).astype(np.uint64)
    with np.errstate(invalid="ignore"):  # a signalling NaN makes isnan "invalid" for bfloat16
        first_nan = np.isnan(first)
        second_nan = np.isnan(second)
    distance[first_nan & second_nan] = 0
    distance[first_nan ^ second_nan] = NAN_VS_NUMBER_DISTANCE
    return distance.reshape(shape)


def round_to_dtype(values: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """``values`` correctly rounded (to nearest, ties to even) to the float dtype ``dtype``.

    numpy rounds float64 to float16 and float32 correctly, but ml_dtypes casts float64 to bfloat16
    through float32, which rounds twice: ``1 + 2**-8 + 2**-30`` becomes 1 instead of ``1 + 2**-7``.
    Rounding to float32 *to odd* first (truncate, then set the last bit if anything was lost)
    keeps enough information for the second rounding to be the correct one.
    """
    if values.dtype == dtype:
        return values
    if dtype != BFLOAT16 or values.dtype.itemsize <= 4:
        return values.astype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # overflowing to inf is the right answer
        as_float32 = values.astype(np.float32)
        widened_back = as_float32.astype(values.dtype)
        overshot = np.abs(widened_back) > np.abs(values)
        inexact = (widened_back != values) & ~np.isnan(values)
    truncated = np.where(overshot, np.nextafter(as_float32, np.float32(0)), as_float32)
    odd_bits = truncated.view(np.uint32) | inexact.astype(np.uint32)
    rounded: np.ndarray = odd_bits.view(np.float32).astype(BFLOAT16)
    return rounded
