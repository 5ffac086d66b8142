"""Distribution shift between a reference output and a candidate: PSI, scaled Wasserstein, JSD.

Pure numpy and ml_dtypes; knows nothing of cases, backends or bundles. scipy is not used: where
scipy's definitions are the reference (Wasserstein between samples of different sizes, the
Jensen-Shannon divergence), they are transcribed step for step and give its numbers (tested
against scipy where it is installed), so the figures are the same bits whether it is installed or
not, whatever its version, and a run's checks do not pay its import (0.2-0.3 s).

    >>> shift(expected, actual)  # {"psi": 0.31, "wasserstein": 0.42, "jsd": None}
    >>> shift_text(shift(expected, actual))
    'PSI 0.31 (major shift), Wasserstein 0.42 std'

Both arrays are read as samples of one distribution each: they are flattened, their shapes and
sizes may differ, and NaN and infinite values are dropped from float arrays.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from detharness.dtypes import numpy_dtype

_BFLOAT16 = numpy_dtype("bfloat16")


def is_categorical(array: Any) -> bool:
    """Whether an output is categorical: integer, bool and string dtypes are; floats are numeric.

    Integer-coded outputs (ids, buckets, counts, one-hot as integers or bools) are categorical; a
    float array is numeric even when its values are integral (a one-hot in float32 is measured as
    numbers unless the caller asks :func:`jsd_bits` for it).
    """
    return np.asarray(array).dtype.kind in "biuUS"


class ReferenceSample:
    """A reference output read once for every candidate held against it.

    A check holds one reference against each variant of its case; :func:`shift`, :func:`psi` and
    :func:`wasserstein_scaled` accept this in place of the reference array and then take its finite
    values, their sorted order and their standard deviation from here instead of computing them
    again for each candidate. The figures are bit for bit those the array itself gives (tested).
    The array must not change while this is in use.
    """

    def __init__(self, expected: Any) -> None:
        self.array = np.asarray(expected)

    @functools.cached_property
    def finite(self) -> np.ndarray:
        """The flattened values, NaN and infinities dropped from a float array."""
        return _sample(self.array)

    @functools.cached_property
    def values(self) -> np.ndarray:
        """The finite values as float64, in the array's order (``ValueError``/``TypeError`` as
        :func:`psi` raises them)."""
        return _numeric(self.array, "expected", sample=self.finite)

    @functools.cached_property
    def ordered(self) -> np.ndarray:
        return np.sort(self.values)

    @functools.cached_property
    def std(self) -> float:
        return float(np.std(self.values))


def _reference(expected: Any) -> ReferenceSample:
    return expected if isinstance(expected, ReferenceSample) else ReferenceSample(expected)


def shift(expected: Any, actual: Any) -> dict[str, float | None]:
    """``{"psi", "wasserstein", "jsd"}`` between the reference ``expected`` and ``actual``.

    The reference's dtype decides the kind: categorical (see :func:`is_categorical`) reports
    ``jsd`` only; numeric (float formats, bfloat16 included) reports ``psi`` and ``wasserstein``
    only; anything else (complex, objects) reports nothing. A figure is None where it does not
    apply, or where a side has no finite value left after NaN and infinities are dropped.
    ``expected`` may be a :class:`ReferenceSample`, made once for many candidates.
    """
    result: dict[str, float | None] = {"psi": None, "wasserstein": None, "jsd": None}
    ref = _reference(expected)
    reference, candidate = ref.array, np.asarray(actual)
    if is_categorical(reference):
        if _sample(reference).size and _sample(candidate).size:
            result["jsd"] = jsd_bits(reference, candidate)
        return result
    if not (_is_real(reference) and (_is_real(candidate) or candidate.dtype.kind in "biu")):
        return result
    if ref.finite.size and _sample(candidate).size:
        result["psi"] = psi(ref, candidate)
        result["wasserstein"] = wasserstein_scaled(ref, candidate)
    return result


def psi(expected: Any, actual: Any, bins: int = 10, floor: float = 1e-4) -> float:
    """The population stability index of ``actual`` against the reference ``expected``'s quantiles.

    Bin edges are the reference's quantiles at ``1/bins, ..., (bins-1)/bins`` (numpy's default
    linear interpolation), so 10 bins are its deciles, with open-ended outer bins. Equal edges (a
    reference with many equal values) are merged with ``np.unique``, leaving fewer bins. A value
    equal to an edge falls in the bin above it (bins are ``[edge, next_edge)``). Each side's
    proportions per bin are floored at ``floor`` (an empty bin counts as ``floor``) and not
    renormalized, the common definition; then ``PSI = sum((a - e) * ln(a / e))``, which is never
    negative and is 0 for identical samples. ``bins`` must be at least 2 and ``floor`` over 0,
    and both sides need a finite value (``ValueError`` otherwise).
    """
    if bins < 2:
        raise ValueError(f"psi needs at least 2 bins, got {bins}")
    if not floor > 0:
        raise ValueError(f"psi needs a floor over 0, got {floor}")
    reference, candidate = _reference(expected).values, _numeric(actual, "actual")
    edges = np.unique(np.quantile(reference, np.arange(1, bins) / bins))
    count = edges.size + 1
    e = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=count) / reference.size
    a = np.bincount(np.searchsorted(edges, candidate, side="right"), minlength=count) / candidate.size
    e, a = np.maximum(e, floor), np.maximum(a, floor)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_reading(value: float) -> str:
    """PSI on its usual scale: ``"stable"`` under 0.1, ``"moderate"`` 0.1 to 0.25, ``"major"`` over."""
    if value < 0.1:
        return "stable"
    if value <= 0.25:
        return "moderate"
    return "major"


def wasserstein_scaled(expected: Any, actual: Any) -> float:
    """The 1-D Wasserstein distance between the two samples over the reference's standard deviation.

    The distance is the integral of ``|F_expected - F_actual|``. For two samples of one size (every
    output compared with its reference) that is the mean distance between their order statistics,
    ``mean(|sort(expected) - sort(actual)|)``: two sorts, 20-45 times faster than
    ``scipy.stats.wasserstein_distance`` on 10^5-10^6 values, and equal to it up to rounding (within
    1e-13 relative, tested). For other sizes it is ``scipy.stats.wasserstein_distance`` transcribed
    step for step. The standard deviation is the population one (``ddof=0``) of ``expected``.
    It is 0.0 where the distance is 0 (identical samples, a constant reference included) and
    ``inf`` where the reference is constant and the distance is not 0. Both sides need a finite
    value (``ValueError`` otherwise).
    """
    ref = _reference(expected)
    distance = _wasserstein(ref, _numeric(actual, "actual"))
    if distance == 0:
        return 0.0
    return distance / ref.std if ref.std > 0 else math.inf


def jsd_bits(expected: Any, actual: Any) -> float:
    """The Jensen-Shannon divergence in bits between the two sides' category frequencies.

    It is ``scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2`` (scipy returns the distance,
    the square root of the divergence), transcribed step for step: 0 for equal frequencies, 1 for
    disjoint categories.

    Categories: when both sides are one-hot (2-D, only 0 and 1, the same number of columns, every
    row summing to 1 or 0) the counts are the column sums, plus one category for the all-zero rows
    (an unknown value many encoders emit); otherwise each distinct value of either side is a
    category (NaN and infinities dropped). Both sides need a value (``ValueError`` otherwise).
    """
    p, q = _category_counts(np.asarray(expected), np.asarray(actual))
    return _jensenshannon_base2(p, q) ** 2


def shift_text(value: Mapping[str, Any] | None) -> str:
    """One line for the reports: ``"PSI 0.31 (major shift), Wasserstein 0.42 std"``, ``"JSD 0.012 bits"``."""
    if value is None:
        return "no shift measured"
    parts = []
    psi_value = value.get("psi")
    if psi_value is not None:
        reading = psi_reading(psi_value)
        parts.append(f"PSI {psi_value:.2g} ({reading if reading == 'stable' else reading + ' shift'})")
    wasserstein = value.get("wasserstein")
    if wasserstein is not None:
        if math.isinf(wasserstein):
            parts.append("Wasserstein inf (the reference is constant)")
        else:
            parts.append(f"Wasserstein {wasserstein:.2g} std")
    jsd = value.get("jsd")
    if jsd is not None:
        parts.append(f"JSD {jsd:.2g} bits")
    return ", ".join(parts) if parts else "no shift measured"


def _is_real(array: np.ndarray) -> bool:
    return array.dtype.kind == "f" or array.dtype == _BFLOAT16


def _sample(array: np.ndarray) -> np.ndarray:
    """The flattened values, NaN and infinities dropped from float arrays."""
    flat = array.reshape(-1)
    if _is_real(flat):
        flat = flat.astype(np.float64)
        flat = flat[np.isfinite(flat)]
    return flat


def _numeric(value: Any, name: str, *, sample: np.ndarray | None = None) -> np.ndarray:
    """The finite values as float64; ``sample`` is ``_sample(value)`` where the caller has it."""
    array = np.asarray(value)
    if array.dtype.kind not in "biuf" and array.dtype != _BFLOAT16:
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    sample = (_sample(array) if sample is None else sample).astype(np.float64)
    if not sample.size:
        raise ValueError(f"{name} has no finite value")
    return sample


def _wasserstein(u: Any, v: np.ndarray) -> float:
    """The distance between the finite values of ``u`` (an array or a :class:`ReferenceSample`)
    and the float64 sample ``v``."""
    ref = _reference(u)
    if ref.values.size == v.size:
        # n atoms of weight 1/n on each side: |F_u - F_v| integrates to the mean gap between the
        # i-th smallest values.
        return float(np.mean(np.abs(ref.ordered - np.sort(v))))
    return _wasserstein_numpy(ref.values, v)


def _wasserstein_numpy(u: np.ndarray, v: np.ndarray) -> float:
    """scipy.stats.wasserstein_distance without weights, step for step (scipy's ``_cdf_distance``)."""
    all_values = np.concatenate((u, v))
    all_values.sort(kind="mergesort")
    deltas = np.diff(all_values)
    u_cdf = np.sort(u).searchsorted(all_values[:-1], "right") / u.size
    v_cdf = np.sort(v).searchsorted(all_values[:-1], "right") / v.size
    gaps = np.abs(u_cdf - v_cdf)
    vecdot = getattr(np, "vecdot", None)
    return float(vecdot(gaps, deltas) if vecdot is not None else np.sum(gaps * deltas))


def _jensenshannon_base2(p: np.ndarray, q: np.ndarray) -> float:
    """scipy.spatial.distance.jensenshannon(p, q, base=2) for 1-D counts, step for step."""
    p = p / np.sum(p)
    q = q / np.sum(q)
    m = (p + q) / 2.0
    js = np.sum(_rel_entr(p, m)) + np.sum(_rel_entr(q, m))
    js /= np.log(2.0)
    return float(np.sqrt(js / 2.0))


def _rel_entr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """scipy.special.rel_entr where ``y`` is a mixture holding ``x`` (so ``y > 0`` wherever ``x > 0``).

    ``x log(x/y)``, 0 where ``x`` is 0, with ``log1p`` where ``x/y`` is within (0.5, 2) as scipy's
    does, element by element through the C library's ``log`` (numpy's vectorized log may differ
    from it in the last bit).
    """
    out = []
    for a, b in zip(x.tolist(), y.tolist(), strict=True):
        if a <= 0:
            out.append(0.0)
            continue
        ratio = a / b
        out.append(a * math.log1p((a - b) / b) if 0.5 < ratio < 2 else a * math.log(ratio))
    return np.array(out, dtype=np.float64)


def _category_counts(expected: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hot_p, hot_q = _one_hot_counts(expected), _one_hot_counts(actual)
    if hot_p is not None and hot_q is not None and hot_p.size == hot_q.size:
        p, q = hot_p, hot_q
    else:
        left, right = _sample(expected), _sample(actual)
        if not left.size or not right.size:
            raise ValueError("jsd_bits needs a value on each side")
        categories = np.union1d(left, right)
        p = _counts(left, categories)
        q = _counts(right, categories)
    if not p.sum() or not q.sum():
        raise ValueError("jsd_bits needs a value on each side")
    return p, q


def _one_hot_counts(array: np.ndarray) -> np.ndarray | None:
    """Column sums and the count of all-zero rows, or None where ``array`` is not one-hot."""
    if array.ndim != 2 or array.shape[1] == 0 or (array.dtype.kind not in "biuf" and array.dtype != _BFLOAT16):
        return None
    values = array.astype(np.float64)
    if not np.all((values == 0) | (values == 1)):
        return None
    rows = values.sum(axis=1)
    if np.any(rows > 1):
        return None
    return np.append(values.sum(axis=0), np.count_nonzero(rows == 0)).astype(np.float64)


def _counts(values: np.ndarray, categories: np.ndarray) -> np.ndarray:
    found, counts = np.unique(values, return_counts=True)
    result = np.zeros(categories.size, dtype=np.float64)
    result[np.searchsorted(categories, found)] = counts
    return result
