"""Decisions: the choice a consumer takes from an output, and how many of them flip between two sides.

Pure numpy and ml_dtypes; knows nothing of cases or backends. A decision rule is text::

    decision := rule [ "@" fraction ]
    rule     := "argmax"                 the index of the largest value along the last axis
              | "topk(" K ")"            the set of the K largest along the last axis (order ignored)
              | "threshold(" T ")"       x > T, element by element
              | "sign"                   negative, zero or positive, element by element
    fraction := number [ "%" ]           the share of decisions allowed to flip (default 0)

``argmax`` and ``topk`` take one decision per row (the index into ``shape[:-1]``; a 1-D vector is
one row), ``threshold`` and ``sign`` one per element. ``@ 1%`` of 99 rows allows no flip, of 100
rows one (rounded down exactly, as tolerance fractions are). ``str(decision)`` is the canonical text
and parses back to an equal :class:`Decision`; a budget of 0 is left out.

Values are compared in float64 (integers and bools of both sides as int64 when neither is float).
Ties and specials, on both sides alike:

- ``argmax``/``topk``: NaN counts as larger than everything, +inf included (as in ``np.sort``), all
  NaNs are equal, ``-0`` equals ``+0``, and among equal values the lowest index wins (as in
  ``np.argmax``), so a row with a NaN on one side only usually flips;
- ``threshold(T)``: a NaN never crosses (``nan > T`` is false), and a value equal to T does not;
- ``sign``: four classes, negative, zero (``-0`` and ``+0`` alike), positive and NaN.

The reference's margin at a flip is how far its decision was from changing: ``top1 - top2`` of the
expected row for ``argmax``, the K-th minus the (K+1)-th largest for ``topk``, ``|expected - T|``
for ``threshold`` and ``|expected|`` for ``sign``; a margin that is not finite (a NaN or infinity in
the reference) is reported as ``None``. A flip is a near tie when that margin is within the output's
absolute tolerance ``tol``: ``margin <= 2 * tol`` for ``argmax``/``topk`` (both values at stake may
move by ``tol``; ``tol`` of a row is its largest element's), ``margin <= tol`` for ``threshold`` and
``sign`` (only the value moves). Without a tolerance no flip is a near tie.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from detharness.compare.tolerance import TokenParser, floor_share, format_number
from detharness.errors import DtypeError, UsageError

RULES = ("argmax", "topk", "threshold", "sign")
ROW_RULES = frozenset({"argmax", "topk"})
MAX_INDICES = 10  # how many flipped indices (and their margins) a result lists


class DecisionError(UsageError):
    """A decision rule that cannot be understood, or arrays it cannot be applied to."""


@dataclass(frozen=True)
class Decision:
    """A decision rule plus the share of decisions allowed to flip.

    ``k`` is set for ``topk`` only, ``threshold`` for ``threshold`` only. Build one from text with
    :meth:`parse`; ``str()`` gives the canonical text. Immutable and hashable.
    """

    rule: str
    k: int | None = None
    threshold: float | None = None
    budget: float = 0.0

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise DecisionError(f"unknown decision rule {self.rule!r}; known: {', '.join(RULES)}")
        if self.rule == "topk":
            if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
                raise DecisionError(f"topk needs a whole number K >= 1, got {self.k!r}")
        elif self.k is not None:
            raise DecisionError(f"only topk takes K; {self.rule} got k={self.k!r}")
        if self.rule == "threshold":
            if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
                raise DecisionError(f"threshold needs a finite number T, got {self.threshold!r}")
            value = float(self.threshold)
            if not math.isfinite(value):
                raise DecisionError(f"threshold needs a finite number T, got {self.threshold!r}")
            object.__setattr__(self, "threshold", value)
        elif self.threshold is not None:
            raise DecisionError(f"only threshold takes T; {self.rule} got threshold={self.threshold!r}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)):
            raise DecisionError(f"the allowed fraction of flipped decisions must be in [0, 1], got {self.budget!r}")
        budget = float(self.budget)
        if not 0.0 <= budget <= 1.0:
            raise DecisionError(f"the allowed fraction of flipped decisions must be in [0, 1], got {self.budget!r}")
        object.__setattr__(self, "budget", budget)

    def __str__(self) -> str:
        if self.rule == "topk":
            text = f"topk({self.k})"
        elif self.rule == "threshold":
            assert self.threshold is not None
            text = f"threshold({format_number(self.threshold)})"
        else:
            text = self.rule
        return f"{text} @ {format_number(self.budget)}" if self.budget else text

    @classmethod
    def parse(cls, text: str) -> Decision:
        """The decision ``text`` describes (grammar in the module docstring); :class:`DecisionError` if none."""
        if not isinstance(text, str):
            raise DecisionError(f"a decision is text like 'argmax' or 'topk(5) @ 1%', got {text!r}")
        return _Parser(text).decision()

    @classmethod
    def coerce(cls, value: str | Decision) -> Decision:
        """``value`` as a Decision: parsed if text."""
        return value if isinstance(value, Decision) else cls.parse(value)

    @property
    def per_row(self) -> bool:
        """Whether one decision is taken per row (argmax, topk) rather than per element."""
        return self.rule in ROW_RULES

    def allowed_flips(self, total: int) -> int:
        """How many of ``total`` decisions may flip: ``floor(budget * total)``, exactly."""
        return floor_share(self.budget, total)


_TOKEN = re.compile(
    r"\s*(?:(?P<number>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<word>[A-Za-z_]+)|(?P<symbol>[()@%]))"
)


class _Parser(TokenParser):
    """Reads the grammar in the module docstring, token by token."""

    def __init__(self, text: str) -> None:
        super().__init__(text, _TOKEN)

    def _error(self, what: str, position: int) -> DecisionError:
        return DecisionError(
            f"cannot parse decision {self.text!r}: {what} at position {position}; expected "
            "'argmax', 'topk(K)', 'threshold(T)' or 'sign', optionally followed by '@ 0.01' or '@ 1%'"
        )

    def decision(self) -> Decision:
        token = self._peek()
        if token is None:
            self._fail("empty text")
        if token[0] != "word":
            self._fail(f"expected a rule but found {token[1]!r}")
        name = token[1].lower()
        self.index += 1
        k: int | None = None
        threshold: float | None = None
        if name == "topk":
            self._expect("(")
            k_text = self._number("a whole number K")
            if not k_text.lstrip("+").isdigit() or int(k_text) < 1:
                self._fail(f"topk() takes a whole number K >= 1, got {k_text}", self.number_position)
            k = int(k_text)
            self._expect(")")
        elif name == "threshold":
            self._expect("(")
            t_text = self._number("a number T")
            threshold = float(t_text)
            if not math.isfinite(threshold):
                self._fail(f"threshold() takes a finite number, got {t_text}", self.number_position)
            self._expect(")")
        elif name not in RULES:
            self._fail(f"unknown rule {token[1]!r}", token[2])
        budget = 0.0
        if self._accept("@"):
            budget_text = self._number("a fraction of decisions")
            position = self.number_position
            budget = float(budget_text)
            if self._accept("%"):
                budget = float(Fraction(budget_text) / 100)
            if not 0.0 <= budget <= 1.0:
                self._fail(f"the allowed fraction must be between 0 and 1 (0% and 100%), got {budget_text}", position)
        if self._peek() is not None:
            self._fail(f"unexpected {self._describe_next()}")
        return Decision(name, k, threshold, budget)


# -- counting flips --------------------------------------------------------------------------------


def _check_dtype(array: np.ndarray, role: str) -> None:
    kind = array.dtype.kind
    if kind in "biuf" or array.dtype.name == "bfloat16":
        return
    raise DtypeError(f"decisions need real numbers (floats, integers or bools); {role} is {array.dtype}")


def _as_float64(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float64)


def _as_float(array: np.ndarray) -> np.ndarray:
    """numpy's own floats as they are (their order is float64's), anything else as float64."""
    return array if array.dtype.kind == "f" else _as_float64(array)


def _both_integer(expected: np.ndarray, actual: np.ndarray) -> bool:
    return all(kind in "biu" for kind in expected.dtype.kind + actual.dtype.kind)


def _keys(expected: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int64 keys in the order of the module docstring: NaN largest, -0 equal to +0."""
    if _both_integer(expected, actual):
        uint64 = [array.dtype == np.uint64 for array in (expected, actual)]
        if not any(uint64):
            return expected.astype(np.int64), actual.astype(np.int64)
        if all(uint64):  # flipping the top bit keeps the order and fits int64
            top = np.uint64(1 << 63)
            return np.bitwise_xor(expected, top).view(np.int64), np.bitwise_xor(actual, top).view(np.int64)
    return _float_keys(_as_float64(expected)), _float_keys(_as_float64(actual))


def _float_keys(values: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(values).view(np.int64)
    fill = np.right_shift(bits, 63)  # all ones for negatives
    keys: np.ndarray = np.bitwise_xor(bits, np.bitwise_and(fill, np.int64(np.iinfo(np.int64).max)))
    np.subtract(keys, fill, out=keys)  # -magnitude for negatives, so -0 is 0
    keys[np.isnan(values)] = np.iinfo(np.int64).max
    return keys


def _topk_mask(keys: np.ndarray, k: int) -> np.ndarray:
    """Which elements of each row are among its K largest keys; ties go to the lowest indices."""
    n = keys.shape[-1]
    kth = np.partition(keys, n - k, axis=-1)[..., n - k : n - k + 1]
    chosen: np.ndarray = keys > kth
    still = k - np.count_nonzero(chosen, axis=-1, keepdims=True)
    tied = keys == kth
    chosen |= tied & (np.cumsum(tied, axis=-1, dtype=np.int64) <= still)
    return chosen


def _element_classes(decision: Decision, values: np.ndarray) -> np.ndarray:
    if decision.rule == "threshold":
        crossed: np.ndarray = values > decision.threshold
        return crossed
    # -1, 0 (-0 and +0 alike), 1, and 2 for NaN (np.sign gives NaN, which no cast keeps).
    classes: np.ndarray = (values > 0).astype(np.int8) - (values < 0)
    classes += 2 * np.isnan(values).astype(np.int8)
    return classes


def _rows_of(array: np.ndarray, rows: np.ndarray, lead_shape: tuple[int, ...]) -> np.ndarray:
    """``array``'s rows (or elements) at flat indices ``rows`` into ``lead_shape``."""
    if not lead_shape:
        return np.broadcast_to(array[()], (len(rows), *array.shape))
    result: np.ndarray = array[np.unravel_index(rows, lead_shape)]
    return result


def _margins(decision: Decision, values: np.ndarray) -> np.ndarray:
    """The reference's margin for each of ``values``' rows (argmax, topk) or elements."""
    if decision.rule == "threshold":
        assert decision.threshold is not None
        distance: np.ndarray = np.abs(values - decision.threshold)
        return distance
    if decision.rule == "sign":
        magnitude: np.ndarray = np.abs(values)
        return magnitude
    k = decision.k or 1
    n = values.shape[-1]
    ordered = np.partition(values, [n - k - 1, n - k], axis=-1)
    with np.errstate(invalid="ignore", over="ignore"):
        gaps: np.ndarray = ordered[:, n - k] - ordered[:, n - k - 1]
    return gaps


def decision_flips(decision: Decision | str, expected: Any, actual: Any, tolerance_abs: Any = None) -> dict[str, Any]:
    """How many of the decisions taken from ``expected`` (the reference) change in ``actual``.

    ``tolerance_abs`` is the output's absolute error size, a number or an array broadcastable to
    the arrays' shape (e.g. ``atol + rtol * |expected|``), used only to count near ties (module
    docstring); None counts none. Returns plain Python values: ``rule`` (canonical text),
    ``budget``, ``total`` decisions, ``flips``, ``exceeds`` (flips over ``floor(budget * total)``),
    the first ``indices`` flipped (lists of ints: row indices into ``shape[:-1]`` for argmax/topk,
    element indices otherwise), the reference's ``margins`` there (floats, None where not finite)
    and ``near_ties`` among all flips. :class:`DecisionError` (a ValueError) for arrays of
    different shapes, a 0-d array for argmax/topk, or K not below the last axis' length.
    """
    decision = Decision.coerce(decision)
    expected = np.asarray(expected)
    actual = np.asarray(actual)
    _check_dtype(expected, "expected")
    _check_dtype(actual, "actual")
    if expected.shape != actual.shape:
        raise DecisionError(f"cannot compare decisions of shapes {expected.shape} and {actual.shape}")
    shape = expected.shape
    if decision.per_row:
        if not shape:
            raise DecisionError(f"{decision.rule} decides along the last axis; a 0-d array has none")
        n = shape[-1]
        k = decision.k or 1
        if decision.rule == "topk" and k >= n:
            raise DecisionError(f"topk({k}) needs more than {k} values along the last axis, got {n}")
        if n == 0:
            raise DecisionError(f"{decision.rule} needs at least one value along the last axis, got 0")
        lead_shape = shape[:-1]
    else:
        lead_shape = shape
    total = math.prod(lead_shape)
    tolerance = None
    if tolerance_abs is not None:
        tolerance = np.asarray(tolerance_abs, dtype=np.float64)
        try:
            tolerance = np.broadcast_to(tolerance, shape)
        except ValueError:
            raise DecisionError(
                f"tolerance_abs of shape {tolerance.shape} does not broadcast to the output's shape {shape}"
            ) from None

    flipped = np.zeros(lead_shape, dtype=bool)
    if total:
        if decision.per_row:
            if decision.rule == "argmax" and not _both_integer(expected, actual):
                # np.argmax on floats already takes the first NaN, and -0 == +0: no keys needed.
                flipped = np.argmax(_as_float(expected), axis=-1) != np.argmax(_as_float(actual), axis=-1)
            else:
                keys_e, keys_a = _keys(expected, actual)
                if decision.rule == "argmax":
                    flipped = np.argmax(keys_e, axis=-1) != np.argmax(keys_a, axis=-1)
                else:
                    flipped = np.any(_topk_mask(keys_e, k) != _topk_mask(keys_a, k), axis=-1)
                del keys_e, keys_a
        else:
            flipped = _element_classes(decision, _as_float64(expected)) != _element_classes(
                decision, _as_float64(actual)
            )
    rows = np.flatnonzero(flipped)
    flips = int(rows.size)

    margins = np.zeros(0)
    near_ties = 0
    if flips:
        margins = _margins(decision, _as_float64(_rows_of(expected, rows, lead_shape)))
        if tolerance is not None:
            at_flips = _rows_of(tolerance, rows, lead_shape)
            if decision.per_row:
                at_flips = 2 * np.fmax.reduce(at_flips, axis=-1)
            near_ties = int(np.count_nonzero(margins <= at_flips))

    shown = rows[:MAX_INDICES]
    if lead_shape:
        indices = [[int(i) for i in index] for index in zip(*np.unravel_index(shown, lead_shape), strict=True)]
    else:
        indices = [[] for _ in shown]
    return {
        "rule": str(decision),
        "budget": decision.budget,
        "total": total,
        "flips": flips,
        "exceeds": flips > decision.allowed_flips(total),
        "indices": indices,
        "margins": [float(m) if math.isfinite(m) else None for m in margins[:MAX_INDICES].tolist()],
        "near_ties": near_ties,
    }
