"""What a comparison says beyond its verdict: does it matter, and who is wrong.

:func:`annotate` fills three fields of a :class:`~detharness.results.Result` from the compared arrays:

- ``decision``: for an output whose case declares the decision a consumer takes from it
  (``decisions={"logits": "argmax"}``), how many decisions flip between the two sides; a result
  whose values pass but whose flips exceed the budget becomes ``flipped`` (a known divergence can
  cover it); one that diverged stays ``diverged`` with the field filled;
- ``shift``: for a case tagged ``preprocessing`` or ``skew``, how far the output's distribution
  moved (PSI and Wasserstein for numbers, Jensen-Shannon divergence for categories);
- ``accuracy``: where an :class:`Oracle` is known (the case's float64 variant), how far each side
  is from it and their ratio: the candidate is "37x further from float64 than the baseline", or
  both are rounding noise. It never changes a status.

The measures themselves are pure numpy, in :mod:`detharness.compare` (``decision``, ``shift``,
``accuracy``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from detharness.compare import Status
from detharness.compare.ulp import is_ulp_float

if TYPE_CHECKING:
    from detharness.record import CaseRecord
    from detharness.results import Result

#: Tags of the cases whose outputs are features: their distribution shift is reported.
SHIFT_TAGS = frozenset({"preprocessing", "skew"})
#: Results whose arrays are compared element by element (an error, a skip, a missing side or a
#: shape mismatch has nothing to measure).
_MEASURED = frozenset({Status.IDENTICAL, Status.CLOSE, Status.DIVERGED, Status.MISMATCH})


@dataclass(frozen=True)
class Oracle:
    """The float64 outputs both sides are measured against.

    ``variant`` names it in results; ``baseline`` holds the outputs of the comparison's baseline side
    as the accuracy measures it (in the ``backend`` check, where the float64 reference is the
    comparison's baseline itself, the reference implementation at the candidate's dtype: the best
    that precision gives; ``None`` where the case declares no such variant).
    """

    variant: str
    outputs: Mapping[str, np.ndarray]
    baseline: Mapping[str, np.ndarray] | None
    baseline_name: str = "the baseline"


def _array(arrays: Mapping[str, np.ndarray] | None, name: str | None) -> np.ndarray | None:
    if arrays is None or name is None or name not in arrays:
        return None
    try:
        return np.asarray(arrays[name])
    except Exception:  # a stored array that cannot be read: nothing to measure
        return None


def allowed_error(tolerance: str | None, expected: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray | float | None:
    """The absolute error the tolerance in force allows at each element of ``expected`` (in the
    candidate's ``dtype``): what a decision's margin is held against to call a flip a near tie."""
    from detharness.compare import tolerance as tol

    if not tolerance:
        return None
    try:
        rule = tol.Tolerance.parse(tolerance).rule
    except ValueError:
        return None
    magnitude = np.abs(expected.astype(np.float64))
    # The spacing of 1.0 in the candidate's dtype (bfloat16 included): ulp(n) allows about n of them
    # relative to the value.
    eps = float(np.abs(np.array(1, dtype).astype(np.float64) - np.nextafter(np.array(1, dtype), 2)
                       .astype(np.float64))) if is_ulp_float(dtype) else 0.0

    def size(r: tol.Rule) -> np.ndarray | float:
        if isinstance(r, tol.Ulp):
            return r.budget * eps * magnitude if eps else float(r.budget)
        if isinstance(r, tol.Close):
            return r.atol + r.rtol * magnitude
        if isinstance(r, tol.Scaled):
            finite = magnitude[np.isfinite(magnitude)]
            return r.factor * (float(finite.max()) if finite.size else 0.0)
        if isinstance(r, (tol.AnyOf, tol.AllOf)):
            parts = [np.broadcast_to(size(x), magnitude.shape) for x in r.rules]
            combined: np.ndarray = (np.maximum if isinstance(r, tol.AnyOf) else np.minimum).reduce(parts)
            return combined
        return 0.0

    return size(rule)


def _decision(result: Result, rule: str, expected: np.ndarray, actual: np.ndarray,
              reproduce: str | None) -> Result:
    from detharness.compare.decision import Decision, decision_flips
    from detharness.errors import DetHarnessError

    try:
        decision = Decision.parse(rule)
        found = decision_flips(decision, expected, actual, allowed_error(result.tolerance, expected, actual.dtype))
    except (ValueError, TypeError, DetHarnessError) as exc:
        return result.replace(message=f"{result.message}\n  decision {rule!r} not measured: {exc}")
    result = result.replace(decision=found)
    if not found["exceeds"] or result.status not in (Status.IDENTICAL, Status.CLOSE):
        return result
    allowed = decision.allowed_flips(found["total"])
    near = found["near_ties"]
    where = ", ".join(f"{idx} (margin {m:.3g})" if m is not None else str(idx)
                      for idx, m in zip(found["indices"][:3], found["margins"][:3], strict=False))
    unit = "rows" if found["rule"].startswith(("argmax", "topk")) else "elements"
    headline = (f"FLIPPED | Output: {result.output!r} | {found['rule']}: {found['flips']} of {found['total']} "
                f"{unit} decide otherwise (budget {allowed}), though the values are within tolerance "
                f"{result.tolerance}")
    detail = f"  first at {where}" + (f"; {near} of the flips are near ties (the reference's margin is within "
                                      "the tolerance)" if near else "")
    return result.replace(status=Status.FLIPPED, message=f"{headline}\n{detail}\n{result.message}",
                          reproduce=result.reproduce or reproduce)


def _accuracy(result: Result, oracle: Oracle, actual: np.ndarray, options: Mapping[str, Any]) -> Result:
    from detharness.compare.accuracy import accuracy

    truth = _array(oracle.outputs, result.output)
    if truth is None or truth.dtype != np.float64 or truth.shape != actual.shape or not is_ulp_float(actual.dtype):
        return result
    base = _array(oracle.baseline, result.output)
    metric, factor = options.get("metric", "rms"), float(options.get("factor", 2.0))
    try:
        if base is None or base.shape != actual.shape:
            found = accuracy(truth, actual, actual, metric=metric, factor=factor)
            found.update(baseline_error=None, ratio=None, reading=None)
        else:
            found = accuracy(truth, actual, base, metric=metric, factor=factor)
    except (ValueError, TypeError):
        return result
    return result.replace(accuracy={"oracle": oracle.variant, **found, "baseline": oracle.baseline_name})


def annotate(result: Result, case: CaseRecord | None, expected: Mapping[str, np.ndarray],
             actual: Mapping[str, np.ndarray], *, oracle: Oracle | None = None,
             reproduce: str | None = None, references: dict[int, Any] | None = None) -> Result:
    """``result`` with its ``decision``, ``shift`` and ``accuracy`` filled where they apply.

    ``references``, where given, keeps each reference array's :class:`~detharness.compare.shift.
    ReferenceSample` (by the array's identity, the array kept with it) across the calls of one
    check, which holds one reference against every variant of a case."""
    if case is None or result.output is None or result.status not in _MEASURED:
        return result
    e, a = _array(expected, result.output), _array(actual, result.output)
    if e is None or a is None or e.shape != a.shape:
        return result
    rule = case.decisions.get(result.output)
    if rule is not None:
        result = _decision(result, rule, e, a, reproduce)
    if SHIFT_TAGS & set(case.tags):
        from detharness.compare.shift import ReferenceSample, shift

        reference: Any = e
        if references is not None:
            kept = references.get(id(e))
            if kept is None:  # the array is kept with its sample: its id cannot be another's meanwhile
                kept = references[id(e)] = (e, ReferenceSample(e))
            reference = kept[1]
        with contextlib.suppress(ValueError, TypeError):  # an output shift cannot read: no shift
            result = result.replace(shift=shift(reference, a))
    if oracle is not None:
        result = _accuracy(result, oracle, a, case.accuracy)
    return result
