"""Statuses and Verdicts: what one comparison found, as numbers, as a message, and as JSON.

A :class:`Verdict` is truthy when its status passes (``identical`` or ``close``), so a test can say
``assert compare(expected, actual)`` and read the message on failure. Its fields are named like the
JSON report's result fields (``status``, ``message``, ``tolerance``, ``total``, ...);
:meth:`Verdict.to_json` writes them with non-finite numbers as the strings ``"inf"``, ``"-inf"`` and
``"nan"`` (JSON has no such numbers) and :meth:`Verdict.from_json` reads them back.

The message helpers at the bottom are shared by every producer of verdicts, so that messages look
alike whoever builds them: a headline ``STATUS | Output: 'name' | what happened``, then for a
failure the shape and dtype, the count and share of differing elements, the worst element, a short
table of the worst ones, and the smallest tolerance that would pass with the text to accept it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from decimal import ROUND_CEILING, Decimal
from typing import Any

import numpy as np

from detharness.compare.tolerance import format_number
from detharness.dtypes import FLOAT_DTYPES, numpy_dtype

Scalar = float | int | bool | str


class Status(str, enum.Enum):
    """What a comparison concluded, from best to worst (see :attr:`severity`).

    The values are plain strings, so ``Status.CLOSE == "close"`` and ``json.dumps`` writes them as
    they are.
    """

    IDENTICAL = "identical"  # the same bytes
    CLOSE = "close"  # within tolerance
    KNOWN = "known"  # a declared known divergence that still holds
    SKIPPED = "skipped"  # not runnable here, with the reason
    MISSING = "missing"  # in one side only
    FLIPPED = "flipped"  # within tolerance, but a declared decision (argmax, top-k, ...) flips past its budget
    DIVERGED = "diverged"  # beyond tolerance
    MISMATCH = "mismatch"  # names, dtype, shape, the NaN/inf pattern, or the inputs differ
    ERROR = "error"  # raised, timed out or crashed

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def severity(self) -> int:
        """Rank from 0 (identical) to 8 (error): the worse the status, the higher."""
        return _SEVERITY[self]

    @property
    def passed(self) -> bool:
        """Whether the status counts as agreement: identical or close."""
        return self in (Status.IDENTICAL, Status.CLOSE)


_SEVERITY = {status: rank for rank, status in enumerate(Status)}


def worst(statuses: Iterable[Status | str]) -> Status:
    """The most severe of ``statuses`` (strings accepted); ``identical`` when there are none."""
    return max((Status(status) for status in statuses), key=_SEVERITY.__getitem__, default=Status.IDENTICAL)


# Fields whose numbers may be non-finite: written as strings in JSON, read back as floats.
_FLOAT_FIELDS = ("mean_ulp", "max_abs", "max_rel", "max_scaled")


@dataclass
class Verdict:
    """What one comparison found. Truthy iff the status passes.

    ``total`` elements were compared; ``mismatched`` of them miss the tolerance or the NaN/inf
    pattern; ``differing`` are not bitwise equal (across dtypes: not equal to the rounded
    reference). ULP statistics leave out elements with a NaN against a number (their distance is
    ``2**64 - 1``, meaningless in a mean): those are counted in the ``"nan-vs-number"`` bucket of
    ``ulp_histogram``. ``p99_ulp`` is the exact 99th percentile by the nearest-rank rule: the
    smallest distance that at least 99% of elements do not exceed. On integers and bools the
    distance is ``|actual - expected|`` in units, exact over the whole int64 and uint64 range (not
    an ordinal distance). A NaN/inf-pattern ``mismatch`` has no error figures: ``max_ulp``,
    ``mean_ulp``, ``p99_ulp``, ``max_abs``, ``max_rel``, ``max_scaled`` and the listed elements'
    errors are None (null in JSON), never 0. ``min_passing`` gives the smallest budgets that pass on
    their own, ``{"ulp", "rtol" (atol 0), "atol" (rtol 0), "scaled"}``, counting the elements the
    tolerance's fraction allows to miss; all None where nothing passes (a structural mismatch).
    They are the observed errors themselves: ``close(rtol, 0)`` with exactly that rtol can still
    miss by a float rounding of ``rtol * |expected|``, so the message's suggestions are rounded up
    to two significant digits.
    Indices are lists of ints, one per dimension. For a mapping of outputs, ``outputs`` holds one
    Verdict per name and only ``total``, ``mismatched`` and ``differing`` are summed; the other
    statistics are per output.

    ``identical`` means the same bytes: ``+0`` against ``-0``, or two NaNs with different payloads,
    are not identical (they are ``close`` under ``ulp(0)``), and a candidate of another dtype than
    its reference is at best ``close``. A bitwise-determinism check wants exactly that strictness.
    """

    status: Status
    message: str = ""
    tolerance: str = ""
    total: int = 0
    mismatched: int = 0
    max_ulp: int | None = None
    mean_ulp: float | None = None
    p99_ulp: int | None = None
    ulp_histogram: dict[str, int] = field(default_factory=dict)
    max_abs: float | None = None
    max_rel: float | None = None
    max_scaled: float | None = None
    first_mismatch_index: list[int] | None = None
    worst_index: list[int] | None = None
    worst_expected: Scalar | None = None
    worst_actual: Scalar | None = None
    min_passing: dict[str, int | float | None] = field(default_factory=dict)
    output: str | None = None
    outputs: dict[str, Verdict] = field(default_factory=dict)
    dtype: str | None = None
    expected_dtype: str | None = None
    shape: tuple[int, ...] | None = None
    differing: int = 0
    worst_elements: list[dict[str, Any]] = field(default_factory=list)
    underlying_status: Status | None = None  # kept beside ``known``: what really happened

    def __post_init__(self) -> None:
        self.status = Status(self.status)
        if self.underlying_status is not None:
            self.underlying_status = Status(self.underlying_status)

    def __bool__(self) -> bool:
        return self.status.passed

    @property
    def passed(self) -> bool:
        return self.status.passed

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict: the JSON report's result fields first, then the extras, then ``outputs``."""
        result: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "outputs":
                continue
            if item.name == "underlying_status" and value is None:
                continue
            result[item.name] = _json_safe(value)
        if self.outputs:
            result["outputs"] = [verdict.to_json() for verdict in self.outputs.values()]
        return result

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Verdict:
        """The Verdict :meth:`to_json` wrote (unknown keys are ignored, so newer writers still read)."""
        known = {item.name for item in fields(cls)}
        values = {key: value for key, value in data.items() if key in known and key != "outputs"}
        for name in _FLOAT_FIELDS:
            if name in values:
                values[name] = _from_json_number(values[name])
        if "min_passing" in values:
            values["min_passing"] = {key: _from_json_number(value) for key, value in values["min_passing"].items()}
        numeric_values = values.get("dtype") != "str"
        if numeric_values:
            for name in ("worst_expected", "worst_actual"):
                if name in values:
                    values[name] = _from_json_number(values[name])
        if values.get("shape") is not None:
            values["shape"] = tuple(values["shape"])
        values["worst_elements"] = [
            {
                key: (
                    _from_json_number(value)
                    if key != "index" and (numeric_values or key not in ("expected", "actual"))
                    else value
                )
                for key, value in row.items()
            }
            for row in values.get("worst_elements", [])
        ]
        outputs = {}
        for entry in data.get("outputs", []):
            verdict = cls.from_json(entry)
            outputs[verdict.output or ""] = verdict
        return cls(**values, outputs=outputs)


def _json_safe(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _from_json_number(value: Any) -> Any:
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return value


# -- message helpers ---------------------------------------------------------------------------


def headline(status: Status, output: str | None, what: str) -> str:
    """``DIVERGED | Output: 'y' | what``, the output part left out for an unnamed array."""
    label = f" | Output: {output!r}" if output is not None else ""
    return f"{status.value.upper()}{label} | {what}"


def share(count: int, total: int) -> str:
    """``count / total (p%)`` with three significant digits, never rounding a few to 0%."""
    if total == 0 or count == 0:
        percent = "0%"
    else:
        value = 100.0 * count / total
        if value < 0.001:
            percent = "<0.001%"
        elif value > 99.999 and count < total:
            percent = ">99.999%"
        else:
            percent = f"{value:.3g}%"
    return f"{count} / {total} ({percent})"


def format_value(value: Scalar | None, dtype_name: str | None) -> str:
    """A value as its own dtype prints it: float32 ``1.0000001``, not ``1.0000001192092896``."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return repr(value)
    if dtype_name in FLOAT_DTYPES and isinstance(value, (int, float)):
        return str(numpy_dtype(dtype_name).type(value))
    return str(value)


def format_error(value: float | None) -> str:
    """An error statistic with three significant digits."""
    if value is None:
        return "-"
    return f"{value:.3g}"


def round_up(value: float, digits: int = 2) -> float:
    """``value`` rounded up to ``digits`` significant digits, so a suggested budget really passes."""
    if value == 0 or not math.isfinite(value):
        return value
    exact = Decimal(value)
    quantum = Decimal(1).scaleb(exact.adjusted() - digits + 1)
    rounded = float(exact.quantize(quantum, rounding=ROUND_CEILING))
    return rounded if rounded >= value else math.nextafter(rounded, math.inf)


def format_index(index: Sequence[int] | None) -> str:
    return "-" if index is None else "[" + ", ".join(str(i) for i in index) + "]"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "    ") -> list[str]:
    """Left-aligned columns separated by two spaces; numbers line up well enough at this size."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for row in (header, *rows):
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def format_budget(value: float) -> str:
    """A budget for a suggested tolerance: rounded up to two significant digits, canonical text."""
    return format_number(round_up(value))
