"""Accuracy against a float64 oracle: how far each side is from the truth, and who is more wrong.

Pure numpy and ml_dtypes; knows nothing of cases, backends or bundles.

    >>> acc = accuracy(oracle, candidate, baseline)  # {"metric", "candidate_error", ..., "reading"}
    >>> reading_text(acc, "torch", "numpy")
    'both rounding noise: torch is 1.04x as far from float64 as numpy'

:func:`accuracy` measures the candidate's and the baseline's error against the same oracle with the
same metric and reads their ratio against a factor (2 by default, the bound PyTorch's
``same(fp64_ref=...)`` uses to accept a compiled model). It adds information: it never judges a
result on its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

METRICS: tuple[str, ...] = ("rms", "max_scaled")
READINGS: tuple[str, ...] = ("rounding-noise", "candidate-worse", "baseline-worse")


def accuracy(oracle: Any, candidate: Any, baseline: Any, *, metric: str = "rms", factor: float = 2.0) -> dict[str, Any]:
    """The candidate's and the baseline's error against ``oracle``, their ratio, and its reading.

    Returns ``{"metric", "candidate_error", "baseline_error", "ratio", "reading"}`` (the caller adds
    ``"oracle"``, the oracle variant's id). The three arrays must have one shape (``ValueError``
    otherwise); any float format (float16, bfloat16, float32, float64), integers and bools are
    accepted, and everything is computed in float64.

    Only elements where all three arrays are finite are measured: an element that is NaN or
    infinite on any side is left out of both errors (the NaN/inf pattern is the verdict's business).
    Where no element is finite on all three sides (or the arrays are empty), both errors, the ratio
    and the reading are None.

    Metrics, with ``d = x - oracle`` over the measured elements:

    - ``"rms"``: ``sqrt(mean(d**2))`` (computed scaled by ``max|d|``, so it does not overflow);
    - ``"max_scaled"``: ``max|d| / max|oracle|``. Where ``max|oracle|`` is 0 the scale is taken as
      1, so the error is ``max|d|`` (0 when both are 0). The scale is common to both sides, so the
      ratio is taken from the two ``max|d|`` themselves (a subnormal scale can make both errors
      ``inf`` and still leave a finite ratio).

    ``ratio = candidate_error / baseline_error``: ``inf`` when only the baseline error is 0, 1 when
    both are. The reading is ``"rounding-noise"`` for a ratio within ``[1/factor, factor]``,
    ``"candidate-worse"`` above ``factor`` and ``"baseline-worse"`` below ``1/factor``. ``factor``
    must be over 1 (``ValueError``).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown accuracy metric {metric!r}; known: {', '.join(METRICS)}")
    factor = float(factor)
    if not factor > 1:  # also refuses NaN
        raise ValueError(f"the accuracy factor must be over 1, got {factor!r}")
    arrays = [_as_float64(value) for value in (oracle, candidate, baseline)]
    shapes = [array.shape for array in arrays]
    if len(set(shapes)) != 1:
        raise ValueError(
            f"accuracy needs one shape for the oracle, candidate and baseline, got {shapes[0]}, {shapes[1]} and {shapes[2]}"
        )
    truth, cand, base = arrays
    finite = np.isfinite(truth) & np.isfinite(cand) & np.isfinite(base)
    result: dict[str, Any] = {
        "metric": metric,
        "candidate_error": None,
        "baseline_error": None,
        "ratio": None,
        "reading": None,
    }
    if not finite.any():
        return result
    truth, cand, base = truth[finite], cand[finite], base[finite]
    candidate_error = _error(truth, cand, metric)
    baseline_error = _error(truth, base, metric)
    if metric == "max_scaled":  # the scale cancels: divide the maxima themselves (a tiny scale overflows)
        ratio = _ratio(float(np.abs(cand - truth).max()), float(np.abs(base - truth).max()))
    else:
        ratio = _ratio(candidate_error, baseline_error)
    result.update(
        candidate_error=candidate_error,
        baseline_error=baseline_error,
        ratio=ratio,
        reading=_reading(ratio, factor),
    )
    return result


def reading_text(acc: Mapping[str, Any], candidate_name: str, baseline_name: str) -> str:
    """The sentence the reports use for an :func:`accuracy` result.

    ``"both rounding noise: torch is 1.04x as far from float64 as numpy"``,
    ``"cuda is 37x further from float64 than cpu"``, ``"cpu is 3.2x further from float64 than
    cuda"``; where one side's error is 0 it says which side equals float64 and how far the other is.
    """
    cand, base = candidate_name, baseline_name
    reading, ratio = acc.get("reading"), acc.get("ratio")
    if reading is None or ratio is None:
        return f"no element is finite on all three sides: {cand} and {base} not measured against float64"
    candidate_error, baseline_error = acc.get("candidate_error"), acc.get("baseline_error")
    metric = acc.get("metric", "rms")
    if candidate_error == 0 and baseline_error == 0:
        return f"both equal float64: {cand} and {base} have no error"
    if baseline_error == 0:
        return f"{base} equals float64 and {cand} is {candidate_error:.3g} from it ({metric})"
    if candidate_error == 0:
        return f"{cand} equals float64 and {base} is {baseline_error:.3g} from it ({metric})"
    if reading == "candidate-worse":
        return f"{cand} is {ratio:.3g}x further from float64 than {base}"
    if reading == "baseline-worse":
        return f"{base} is {1 / ratio:.3g}x further from float64 than {cand}"
    return f"both rounding noise: {cand} is {ratio:.3g}x as far from float64 as {base}"


def _as_float64(value: Any) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind in "cUSOM":
        raise TypeError(f"accuracy needs real numbers, got dtype {array.dtype}")
    return array.astype(np.float64)


def _error(truth: np.ndarray, value: np.ndarray, metric: str) -> float:
    diff = np.abs(value - truth)
    largest = float(diff.max())
    if metric == "max_scaled":
        scale = float(np.abs(truth).max())
        return largest / scale if scale > 0 else largest
    if largest == 0 or not math.isfinite(largest):
        return largest
    return largest * math.sqrt(float(np.mean(np.square(diff / largest))))


def _ratio(candidate_error: float, baseline_error: float) -> float:
    if baseline_error == 0:
        return 1.0 if candidate_error == 0 else math.inf
    return candidate_error / baseline_error


def _reading(ratio: float, factor: float) -> str | None:
    if math.isnan(ratio):  # both errors infinite: the difference itself overflowed float64
        return None
    if ratio > factor:
        return "candidate-worse"
    if ratio < 1 / factor:
        return "baseline-worse"
    return "rounding-noise"
