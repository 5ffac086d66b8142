"""``compare(expected, actual, tolerance)``: structure first, then values, then a Verdict.

Checks run in the order that makes each message useful: output names, then dtype, then shape, then
the NaN/inf pattern and the values together (one pass, see :mod:`detharness.compare.scan`). Each
structural check is a small function that returns a ``mismatch`` Verdict with its own message, or
None to go on.

Dtypes: two float dtypes may differ (a float16 variant against a float64 reference): ULPs are then
counted in the candidate's format, after rounding the reference to it, while absolute, relative
and scaled errors are computed in float64 from the unrounded values; the default tolerance is the
less precise dtype's. Any other pair of different dtypes (float against int, int32 against int64,
bool against int) is a ``mismatch``: a silent cast would hide exactly the drift this tool is for.
Complex outputs are compared as their real and imaginary parts, so their indices gain a last axis
of length 2 (0 real, 1 imaginary).

What the messages claim: a NaN/inf-pattern ``mismatch`` has no error figures (``max_ulp``,
``mean_ulp``, ``p99_ulp``, ``max_abs``, ``max_rel``, ``max_scaled`` and ``min_passing`` are None:
no distance across a NaN or an infinity means anything); its message counts the elements on which
the patterns differ and shows the first. A float ``diverged`` whose error exceeds
``NOT_ROUNDING_SCALED`` of the output's scale is not rounding: its message offers a
known-divergence declaration instead of a tolerance. Integer outputs report their differences in
units (``max_ulp`` is ``|actual - expected|``, exact over the whole int64 and uint64 range).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from detharness.compare import scan
from detharness.compare.scan import ElementRow, PairScanner, Tally
from detharness.compare.tolerance import Close, Exact, Scaled, Tolerance, Ulp
from detharness.compare.verdict import (
    Status,
    Verdict,
    format_budget,
    format_error,
    format_index,
    format_value,
    headline,
    share,
    table,
    worst,
)
from detharness.dtypes import FLOAT_DTYPES, dtype_name
from detharness.errors import DtypeError, UsageError

ToleranceSpec = None | str | Tolerance
ToleranceOverrides = ToleranceSpec | Mapping[str, str | Tolerance]

# Less precise first: the default tolerance of a mixed pair is the less precise dtype's.
_PRECISION_ORDER = ("bfloat16", "float16", "float32", "float64")
_COMPLEX_PARTS = {"complex64": "float32", "complex128": "float64"}
# A float error above this share of the output's scale (its largest finite |expected|) is no rounding.
NOT_ROUNDING_SCALED = 0.01
_NO_TOLERANCE_ACCEPTS = (
    "  No tolerance accepts a NaN against a number, or an infinity against a finite value or the opposite "
    "infinity: fix the implementation, or declare a known divergence."
)


def compare(expected: Any, actual: Any, tolerance: ToleranceOverrides = None) -> Verdict:
    """Judge ``actual`` against ``expected``.

    ``expected`` and ``actual`` are arrays (numpy, ml_dtypes bfloat16, integers, bools, strings;
    anything ``numpy.asarray`` takes) or mappings of output names to arrays. ``tolerance`` is None
    (each dtype's default), a tolerance string or :class:`Tolerance`, or for mappings a mapping of
    output names to tolerances with an optional ``"default"`` key for the rest. For mappings the
    Verdict's ``outputs`` holds one Verdict per name (expected's order, then names only in actual)
    and its status is the worst of theirs; a name on one side only is a ``mismatch``.
    """
    if isinstance(expected, Mapping) or isinstance(actual, Mapping):
        if not (isinstance(expected, Mapping) and isinstance(actual, Mapping)):
            raise UsageError(
                "compare() takes two arrays or two mappings of output names to arrays, "
                f"got a {type(expected).__name__} and a {type(actual).__name__}"
            )
        return _compare_outputs(expected, actual, tolerance)
    if isinstance(tolerance, Mapping):
        extra = set(tolerance) - {"default"}
        if extra:
            raise UsageError(
                f"per-output tolerances {sorted(extra)} given for a single array; "
                "use a tolerance, or {'default': ...}"
            )
        tolerance = tolerance.get("default")
    return compare_arrays(expected, actual, tolerance)


def _compare_outputs(expected: Mapping[str, Any], actual: Mapping[str, Any], tolerance: ToleranceOverrides) -> Verdict:
    names = list(expected) + [name for name in actual if name not in expected]
    overrides: Mapping[str, str | Tolerance] = tolerance if isinstance(tolerance, Mapping) else {}
    default = overrides.get("default") if isinstance(tolerance, Mapping) else tolerance
    unknown = set(overrides) - set(names) - {"default"}
    if unknown:
        raise UsageError(
            f"tolerance given for unknown output(s) {', '.join(map(repr, sorted(unknown)))}; "
            f"the outputs are {', '.join(map(repr, names)) or 'none'}"
        )
    outputs: dict[str, Verdict] = {}
    for name in names:
        if name not in actual or name not in expected:
            outputs[name] = _missing_output(name, expected, actual)
        else:
            outputs[name] = compare_arrays(expected[name], actual[name], overrides.get(name, default), output=name)
    return _summarise(outputs)


def _missing_output(name: str, expected: Mapping[str, Any], actual: Mapping[str, Any]) -> Verdict:
    present, absent = ("expected", "actual") if name in expected else ("actual", "expected")
    others = ", ".join(repr(other) for other in (actual if absent == "actual" else expected)) or "none"
    fix = (
        "An implementation must return every output of the reference, under the same name."
        if absent == "actual"
        else "An implementation may return only the outputs of the reference: rename or drop this one."
    )
    message = headline(Status.MISMATCH, name, f"Only in {present}; {absent} has outputs {others}") + f"\n  {fix}"
    return Verdict(status=Status.MISMATCH, message=message, output=name)


def _summarise(outputs: dict[str, Verdict]) -> Verdict:
    status = worst(verdict.status for verdict in outputs.values())
    counts = {candidate: 0 for candidate in Status}
    for verdict in outputs.values():
        counts[verdict.status] += 1
    tally_text = ", ".join(f"{count} {state.value}" for state, count in counts.items() if count)
    noun = "output" if len(outputs) == 1 else "outputs"
    lines = [headline(status, None, f"{len(outputs)} {noun}" + (f": {tally_text}" if outputs else ""))]
    lines += [verdict.message for verdict in outputs.values() if not verdict.passed]
    return Verdict(
        status=status,
        message="\n".join(lines),
        total=sum(verdict.total for verdict in outputs.values()),
        mismatched=sum(verdict.mismatched for verdict in outputs.values()),
        differing=sum(verdict.differing for verdict in outputs.values()),
        outputs=outputs,
    )


# -- one array against another -------------------------------------------------------------------


def _dtype_label(array: np.ndarray) -> str:
    if array.dtype.kind == "S":
        return "bytes"  # numpy cannot compare bytes with str elements: keep them apart
    name = dtype_name(array.dtype)
    if name == "object":
        raise DtypeError("compare() cannot judge object arrays; convert the output to a numeric or string dtype")
    return name


def _default_dtype(expected_name: str, actual_name: str) -> str:
    if expected_name in _PRECISION_ORDER and actual_name in _PRECISION_ORDER:
        return min(expected_name, actual_name, key=_PRECISION_ORDER.index)
    return "str" if actual_name == "bytes" else actual_name


def compare_arrays(
    expected: Any, actual: Any, tolerance: ToleranceSpec = None, *, output: str | None = None
) -> Verdict:
    """:func:`compare` for one pair of arrays, the verdict labelled with ``output``."""
    expected = np.asarray(expected)
    actual = np.asarray(actual)
    expected_name = _dtype_label(expected)
    actual_name = _dtype_label(actual)
    rule = Tolerance.coerce(tolerance, _default_dtype(expected_name, actual_name))
    # Verdicts are falsy when they fail, so the checks are chained on None, never with ``or``.
    mismatch = _check_dtypes(expected_name, actual_name, output, rule)
    if mismatch is None:
        mismatch = _check_shapes(expected, actual, actual_name, output, rule)
    if mismatch is not None:
        return mismatch
    if actual_name in ("str", "bytes"):
        return _compare_equality(expected, actual, actual_name, output, rule)
    if actual_name in _COMPLEX_PARTS:
        part = _COMPLEX_PARTS[actual_name]
        # Real and imaginary parts as a last axis of 2; through a last axis of 1 first, since numpy
        # cannot change the itemsize of a 0-d array's view.
        expected = _parts(expected, part)
        actual = _parts(actual, part)
    return _compare_values(expected, actual, expected_name, actual_name, output, rule)


def _parts(array: np.ndarray, part: str) -> np.ndarray:
    """A complex array as its real and imaginary parts, on a new last axis of 2."""
    whole = np.ascontiguousarray(array).reshape((*array.shape, 1))
    return whole.view(np.dtype(part).newbyteorder(array.dtype.byteorder))


def _check_dtypes(expected_name: str, actual_name: str, output: str | None, rule: Tolerance) -> Verdict | None:
    if expected_name == actual_name or (expected_name in FLOAT_DTYPES and actual_name in FLOAT_DTYPES):
        return None
    message = "\n".join(
        [
            headline(Status.MISMATCH, output, f"dtype differs: expected {expected_name}, actual {actual_name}"),
            "  Values are compared only between two float dtypes or two equal dtypes; "
            f"make the implementation return {expected_name}.",
        ]
    )
    return Verdict(
        status=Status.MISMATCH,
        message=message,
        tolerance=str(rule),
        output=output,
        dtype=actual_name,
        expected_dtype=expected_name,
    )


def _check_shapes(
    expected: np.ndarray, actual: np.ndarray, actual_name: str, output: str | None, rule: Tolerance
) -> Verdict | None:
    if expected.shape == actual.shape:
        return None
    message = "\n".join(
        [
            headline(Status.MISMATCH, output, f"Shape differs: expected {expected.shape}, actual {actual.shape}"),
            "  Values are compared only between outputs of one shape (no broadcasting).",
        ]
    )
    return Verdict(
        status=Status.MISMATCH,
        message=message,
        tolerance=str(rule),
        output=output,
        dtype=actual_name,
        shape=tuple(actual.shape),
    )


def _index(position: int, shape: tuple[int, ...]) -> list[int]:
    return [int(i) for i in np.unravel_index(position, shape)] if shape else []


def _scalar(value: Any) -> Any:
    """A numpy scalar as the Python number (or bool or str) JSON can hold."""
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (str, bytes)):
        return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
    return float(value)


def _compare_equality(
    expected: np.ndarray, actual: np.ndarray, label: str, output: str | None, rule: Tolerance
) -> Verdict:
    """Strings: only equality exists, so every rule reads as ``exact`` (its fraction still counts)."""
    total = int(actual.size)
    expected_flat, actual_flat = expected.reshape(-1), actual.reshape(-1)
    mismatched = 0
    first_positions: list[int] = []
    for start in range(0, total, scan.CHUNK_ELEMENTS):
        differ = np.flatnonzero(
            expected_flat[start : start + scan.CHUNK_ELEMENTS] != actual_flat[start : start + scan.CHUNK_ELEMENTS]
        )
        mismatched += differ.size
        if len(first_positions) < scan.SHOWN_ELEMENTS:
            first_positions += [start + int(i) for i in differ[: scan.SHOWN_ELEMENTS - len(first_positions)]]
    shape = tuple(actual.shape)
    rows = [
        {
            "index": _index(p, shape),
            "expected": _scalar(expected_flat[p]),
            "actual": _scalar(actual_flat[p]),
            "ulp": None,
            "abs": None,
            "rel": None,
        }
        for p in first_positions
    ]
    allowed = rule.allowed_mismatches(total)
    status = Status.IDENTICAL if mismatched == 0 else Status.CLOSE if mismatched <= allowed else Status.DIVERGED
    verdict = Verdict(
        status=status,
        tolerance=str(rule),
        total=total,
        mismatched=mismatched,
        differing=mismatched,
        first_mismatch_index=rows[0]["index"] if rows else None,
        worst_index=rows[0]["index"] if rows else None,
        worst_expected=rows[0]["expected"] if rows else None,
        worst_actual=rows[0]["actual"] if rows else None,
        output=output,
        dtype=label,
        expected_dtype=label,
        shape=shape,
        worst_elements=rows,
    )
    if status is Status.IDENTICAL:
        verdict.message = headline(status, output, f"{total} elements, all equal")
    elif status is Status.CLOSE:
        verdict.message = headline(
            status, output, f"{share(mismatched, total)} differ, within the allowed {allowed} ({rule})"
        )
    else:
        lines = [
            headline(status, output, "Strings differ"),
            f"  Shape: {shape}, dtype: {label}",
            f"  Number of differences: {share(mismatched, total)}",
            f"  First differences ({len(rows)} shown of {mismatched}):",
            *table(
                ("index", "expected", "actual"),
                [(format_index(r["index"]), repr(r["expected"]), repr(r["actual"])) for r in rows],
            ),
            "  Strings are compared for equality only; fix the implementation, or allow a fraction: "
            f'tolerance="exact @ {_fraction_to_pass(mismatched, total)}"',
        ]
        verdict.message = "\n".join(lines)
    return verdict


def _fraction_to_pass(mismatched: int, total: int) -> str:
    """The smallest round fraction f with floor(f * total) >= mismatched."""
    return format_budget(mismatched / total) if total else "0"


def _percentile_keep(count: int) -> int:
    """How many of the largest values can lie at or above the 99th percentile of ``count``."""
    return count - _p99_rank(count) + 1 if count else 0


def _p99_rank(count: int) -> int:
    """The nearest-rank position (1-based, ascending) of the 99th percentile: ceil(0.99 * count)."""
    return (99 * count + 99) // 100


def _compare_values(
    expected: np.ndarray,
    actual: np.ndarray,
    expected_name: str,
    actual_name: str,
    output: str | None,
    rule: Tolerance,
) -> Verdict:
    float_like = actual.dtype.kind == "f" or actual_name in FLOAT_DTYPES or actual_name in _COMPLEX_PARTS
    kind = "float" if float_like else "integer"
    scanner = PairScanner(expected, actual, kind, rule)
    if rule.needs_scale:
        scanner.scale = scan.measure_scale(scanner)
    total = scanner.total
    allowed = rule.allowed_mismatches(total)
    found = scan.tally(scanner, _percentile_keep(total), allowed + 1)
    scale = scanner.scale if scanner.scale is not None else found.scale
    shape = tuple(actual.shape)
    valid = total - found.nan_vs_number  # elements with a meaningful distance

    table_counts = found.ulp_table.copy()
    table_counts[0] += total - found.examined  # equal bytes: distance 0
    histogram = scan.histogram_buckets(table_counts, found.large_buckets)
    if found.nan_vs_number:
        histogram["nan-vs-number"] = found.nan_vs_number
    # A NaN/inf-pattern mismatch has no error figures: a distance across a NaN or an infinity means
    # nothing, and the finite elements' figures would read as the mismatch's own.
    measured = bool(valid) and not found.structural
    max_ulp = (found.max_row.ulp if found.max_row is not None else 0) if measured else None
    max_abs = found.max_abs if measured else None
    max_rel = found.max_rel if measured else None
    max_scaled = _scaled(found.max_abs, scale) if measured else None
    key_bits = 8 * actual.dtype.itemsize if kind == "float" else 64
    p99, budgets = _selected_statistics(scanner, found, table_counts, valid, allowed, key_bits)
    if not measured:
        p99 = None
    if found.structural:
        min_passing: dict[str, int | float | None] = {"ulp": None, "rtol": None, "atol": None, "scaled": None}
    elif budgets is not None:
        min_passing = {
            "ulp": budgets["ulp"],
            "rtol": _as_float(budgets["rel"]),
            "atol": _as_float(budgets["abs"]),
            "scaled": _scaled(_as_float(budgets["abs"]), scale),
        }
    else:
        min_passing = {"ulp": max_ulp, "rtol": max_rel, "atol": max_abs, "scaled": max_scaled}

    status = _judge(found, scanner.same_dtype, allowed)
    shown = _shown_rows(found, status)
    worst_row = shown[0] if shown else None
    first_candidates = [found.first_failing] if found.first_failing is not None else []
    first_candidates += [row.position for row in found.structural_rows[:1]]

    verdict = Verdict(
        status=status,
        tolerance=str(rule),
        total=total,
        mismatched=found.failing + found.structural,
        max_ulp=max_ulp,
        mean_ulp=found.ulp_sum / valid if measured else None,  # int / int: correctly rounded
        p99_ulp=p99,
        ulp_histogram=histogram,
        max_abs=max_abs,
        max_rel=max_rel,
        max_scaled=max_scaled,
        first_mismatch_index=_index(min(first_candidates), shape) if first_candidates else None,
        worst_index=_index(worst_row.position, shape) if worst_row else None,
        worst_expected=_scalar(worst_row.expected) if worst_row else None,
        worst_actual=_scalar(worst_row.actual) if worst_row else None,
        min_passing=min_passing,
        output=output,
        dtype=actual_name,
        expected_dtype=expected_name,
        shape=shape,
        differing=found.bytes_differ,
        worst_elements=[_row_json(row, shape, measured) for row in shown],
    )
    verdict.message = _value_message(verdict, rule, found, allowed, kind)
    return verdict


def _judge(found: Tally, same_dtype: bool, allowed: int) -> Status:
    if found.structural:
        return Status.MISMATCH
    if same_dtype and found.bytes_differ == 0:
        return Status.IDENTICAL
    return Status.CLOSE if found.failing <= allowed else Status.DIVERGED


def _shown_rows(found: Tally, status: Status) -> list[ElementRow]:
    """The elements a Verdict lists: the structural ones, else those beyond the tolerance, else
    (a pass) the farthest one."""
    if found.structural_rows:
        return found.structural_rows
    if found.worst_rows:
        return found.worst_rows
    return [found.max_row] if found.max_row is not None and status is not Status.IDENTICAL else []


def _selected_statistics(
    scanner: PairScanner, found: Tally, table_counts: np.ndarray, valid: int, allowed: int, key_bits: int
) -> tuple[int | None, dict[str, int] | None]:
    """The exact 99th-percentile ULP and, when a fraction may miss, the (allowed + 1)-th largest
    ULP, absolute and relative errors (as uint64 keys): the smallest budgets that pass."""
    wanted: dict[str, tuple[scan.LargestValues, str, int, int]] = {}
    rank = _p99_rank(valid)
    at_or_below = np.cumsum(table_counts)
    if valid and at_or_below[-1] < rank:  # the percentile lies past the exact table
        wanted["p99"] = (found.large_ulps, "ulp", valid - rank + 1, key_bits)
    if not found.structural and allowed and valid:
        wanted["ulp"] = (found.keep_ulp, "ulp", allowed + 1, key_bits)
        wanted["abs"] = (found.keep_abs, "abs", allowed + 1, 64)
        wanted["rel"] = (found.keep_rel, "rel", allowed + 1, 64)
    selected = _kth_largest(scanner, wanted)
    if not valid:
        p99 = None
    elif "p99" in selected:
        p99 = selected["p99"]
    else:
        p99 = int(np.searchsorted(at_or_below, rank))
    return p99, (selected if "ulp" in selected else None)


def _scaled(abs_error: float | None, scale: float) -> float | None:
    if abs_error is None:
        return None
    if scale == 0:
        # Against an all-zero reference any error is infinitely large on its scale.
        return 0.0 if abs_error == 0 else math.inf
    return abs_error / scale


def _as_float(key: int) -> float:
    return float(np.array([key], np.uint64).view(np.float64)[0])


def _kth_largest(scanner: PairScanner, wanted: dict[str, tuple[scan.LargestValues, str, int, int]]) -> dict[str, int]:
    """Each wanted k-th largest value: from what the pass kept, else by radix passes (shared)."""
    selected: dict[str, int] = {}
    pending: dict[str, scan.Selection] = {}
    for name, (kept, measure, k, key_bits) in wanted.items():
        value = kept.kth_largest(k)
        if value is None:
            pending[name] = scan.Selection(measure, k, key_bits)
        else:
            selected[name] = value
    if pending:
        scan.select_kth_largest(scanner, list(pending.values()))
        selected.update({name: int(selection.result or 0) for name, selection in pending.items()})
    return selected


def _row_json(row: ElementRow, shape: tuple[int, ...], measured: bool = True) -> dict[str, Any]:
    """One listed element; without errors (None) where the NaN/inf patterns differ."""
    return {
        "index": _index(row.position, shape),
        "expected": _scalar(row.expected),
        "actual": _scalar(row.actual),
        "ulp": row.ulp if measured else None,
        "abs": row.abs_error if measured else None,
        "rel": row.rel_error if measured else None,
    }


# -- messages ---------------------------------------------------------------------------------------


def _value_dtype(name: str | None) -> str | None:
    return _COMPLEX_PARTS.get(name or "", name)


def _describe_dtype(verdict: Verdict) -> str:
    if verdict.expected_dtype != verdict.dtype:
        return f"{verdict.dtype} against a {verdict.expected_dtype} reference (ULPs in {verdict.dtype})"
    return f"{verdict.dtype}"


def _not_equal_words(verdict: Verdict) -> str:
    if verdict.expected_dtype != verdict.dtype:
        return f"not equal to the reference rounded to {verdict.dtype}"
    return "not bitwise equal"


def _element_text(verdict: Verdict, row: dict[str, Any], kind: str) -> str:
    expected = format_value(row["expected"], _value_dtype(verdict.expected_dtype))
    actual = format_value(row["actual"], _value_dtype(verdict.dtype))
    if row["ulp"] is None:
        return f"expected {expected}, actual {actual}"
    if kind == "integer":
        difference = f"difference {row['ulp']} {_units(row['ulp'])}"
        return f"expected {expected}, actual {actual} ({difference}, rel {format_error(row['rel'])})"
    return (
        f"expected {expected}, actual {actual} ({row['ulp']} ulp, "
        f"abs {format_error(row['abs'])}, rel {format_error(row['rel'])})"
    )


def _units(count: int | None) -> str:
    return "unit" if count == 1 else "units"


def _rows_table(verdict: Verdict, kind: str, with_errors: bool) -> list[str]:
    """The listed elements; integers show their difference in units (the same as abs, exactly)."""
    expected_dtype, actual_dtype = _value_dtype(verdict.expected_dtype), _value_dtype(verdict.dtype)
    header: tuple[str, ...] = ("index", "expected", "actual")
    if with_errors:
        header += ("ulp", "abs err", "rel err") if kind == "float" else ("diff (units)", "rel err")
    rows = []
    for row in verdict.worst_elements:
        cells = [
            format_index(row["index"]),
            format_value(row["expected"], expected_dtype),
            format_value(row["actual"], actual_dtype),
        ]
        if with_errors:
            if kind == "float":
                cells += [str(row["ulp"]), format_error(row["abs"]), format_error(row["rel"])]
            else:
                cells += [str(row["ulp"]), format_error(row["rel"])]
        rows.append(cells)
    return table(header, rows)


def _statistics_line(verdict: Verdict, kind: str) -> str:
    if kind == "integer":
        return (
            f"  Difference: max {verdict.max_ulp} ({_units(verdict.max_ulp)}), mean {format_error(verdict.mean_ulp)}, "
            f"p99 {verdict.p99_ulp}; max rel {format_error(verdict.max_rel)}, "
            f"max scaled {format_error(verdict.max_scaled)}"
        )
    return (
        f"  ULP: max {verdict.max_ulp}, mean {format_error(verdict.mean_ulp)}, p99 {verdict.p99_ulp}; "
        f"max abs {format_error(verdict.max_abs)}, max rel {format_error(verdict.max_rel)}, "
        f"max scaled {format_error(verdict.max_scaled)}"
    )


def _passing_tolerances(verdict: Verdict, rule: Tolerance) -> list[Tolerance]:
    """Each budget that passes on its own, rounded up to two significant digits."""
    found = verdict.min_passing
    options: list[Tolerance] = []
    if found.get("ulp") is not None:
        options.append(Tolerance.ulp(int(found["ulp"])))  # type: ignore[arg-type]
    rtol, atol, scaled = found.get("rtol"), found.get("atol"), found.get("scaled")
    if rtol is not None and math.isfinite(rtol):
        options.append(Tolerance.close(float(format_budget(rtol)), 0.0))
    if atol is not None and math.isfinite(atol):
        options.append(Tolerance.close(0.0, float(format_budget(atol))))
    if scaled is not None and math.isfinite(scaled):
        options.append(Tolerance.scaled(float(format_budget(scaled))))
    return [option.allowing(rule.fraction) for option in options]


def _suggestion(verdict: Verdict, rule: Tolerance, options: list[Tolerance]) -> Tolerance | None:
    """The tolerance to propose: the passing budget of the kind of rule the user already wrote."""
    if not options:
        return None
    by_kind = {type(option.rule): option for option in options if not isinstance(option.rule, Close)}
    leaves = rule.leaves()
    for leaf in leaves:
        if isinstance(leaf, (Ulp, Exact)) and Ulp in by_kind:
            return by_kind[Ulp]
        if isinstance(leaf, Scaled) and Scaled in by_kind:
            return by_kind[Scaled]
        if isinstance(leaf, Close):
            # Keep the user's atol and raise rtol: the rtol alone already passes.
            rtol = verdict.min_passing.get("rtol")
            if rtol is not None and math.isfinite(rtol):
                return Tolerance.close(float(format_budget(rtol)), leaf.atol).allowing(rule.fraction)
            atol = verdict.min_passing.get("atol")
            if atol is not None and math.isfinite(atol):
                return Tolerance.close(leaf.rtol, float(format_budget(atol))).allowing(rule.fraction)
    return options[0]


def _not_rounding(verdict: Verdict, kind: str) -> float | None:
    """The scaled error a tolerance would have to accept, where it is too large to be rounding.

    That is the largest one beyond those the fraction allows (``min_passing``'s), else the largest.
    Only float outputs are judged (an integer's difference has no rounding to compare with), and
    only against a non-zero scale: against an all-zero reference every error is infinitely large.
    """
    if kind != "float":
        return None
    needed = verdict.min_passing.get("scaled")
    if needed is None:
        needed = verdict.max_scaled
    if needed is None or not math.isfinite(needed) or needed <= NOT_ROUNDING_SCALED:
        return None
    return float(needed)


def _share_of_scale(scaled: float) -> str:
    """``37% of the output's scale``; past 1000%, ``12 times the output's scale``."""
    percent = 100.0 * scaled
    if percent < 1000:
        return f"{percent:.3g}% of the output's scale"
    return f"{scaled:.3g} times the output's scale"


def _structural_message(verdict: Verdict, rule: Tolerance, found: Tally, kind: str) -> str:
    total, count = verdict.total, found.structural
    first = verdict.worst_elements[0]
    elements = "1 element is" if count == 1 else f"{count} elements are"
    return "\n".join(
        [
            headline(verdict.status, verdict.output, f"NaN/inf pattern differs: {share(count, total)} of the elements"),
            f"  Shape: {verdict.shape}, dtype: {_describe_dtype(verdict)}",
            f"  {elements} NaN or infinite on one side only, or infinities of opposite signs; the first at "
            f"{format_index(first['index'])}: {_element_text(verdict, {**first, 'ulp': None}, kind)}",
            f"  NaN against a number: {found.nan_vs_number}; "
            f"infinity against a finite value or the opposite infinity: {count - found.nan_vs_number}",
            f"  Differing elements ({len(verdict.worst_elements)} shown of {count}):",
            *_rows_table(verdict, kind, with_errors=False),
            "  No error figures (max ulp, abs, rel, scaled: null): no distance across a NaN or an infinity means "
            "anything.",
            f"  Other elements: {share(verdict.differing - count, total)} {_not_equal_words(verdict)}, "
            f"{found.failing} beyond tolerance {rule}",
            _NO_TOLERANCE_ACCEPTS,
        ]
    )


def _value_message(verdict: Verdict, rule: Tolerance, found: Tally, allowed: int, kind: str) -> str:
    status, output, total = verdict.status, verdict.output, verdict.total
    if status is Status.IDENTICAL:
        return headline(status, output, f"{total} elements, bitwise equal")
    differing = f"{share(verdict.differing, total)} {_not_equal_words(verdict)}"
    if status is Status.CLOSE:
        where = f" at {format_index(verdict.worst_index)}" if verdict.worst_index is not None else ""
        if kind == "integer":
            largest = f"max difference {verdict.max_ulp} ({_units(verdict.max_ulp)}){where}"
        else:
            largest = f"max ulp {verdict.max_ulp}{where}, max abs {format_error(verdict.max_abs)}"
        text = f"Within tolerance {rule}: {differing}; {largest}, max rel {format_error(verdict.max_rel)}"
        if found.failing:
            text += f"; {found.failing} beyond the rule, {allowed} allowed"
        return headline(status, output, text)
    if status is Status.MISMATCH:
        return _structural_message(verdict, rule, found, kind)
    # diverged
    beyond = f"{share(found.failing, total)} beyond the tolerance"
    if rule.fraction:
        beyond += f" ({allowed} allowed)"
    worst_row = verdict.worst_elements[0]
    lines = [
        headline(status, output, f"Difference exceeds tolerance {rule}"),
        f"  Shape: {verdict.shape}, dtype: {_describe_dtype(verdict)}",
        f"  Number of differences: {beyond}; {differing}",
        f"  Worst at {format_index(worst_row['index'])}: {_element_text(verdict, worst_row, kind)}",
        f"  Largest differences ({len(verdict.worst_elements)} shown of {found.failing}):",
        *_rows_table(verdict, kind, with_errors=True),
        _statistics_line(verdict, kind),
    ]
    gross = _not_rounding(verdict, kind)
    if gross is not None:
        largest = f"beyond the {allowed} allowed, the largest error" if allowed else "the largest error"
        lines.append(
            f"  This is not rounding ({largest} is {_share_of_scale(gross)}): if it is expected, declare it: "
            'c.known_divergence("<reason>", variants="<variant pattern>")'
        )
        return "\n".join(lines)
    options = _passing_tolerances(verdict, rule)
    suggestion = _suggestion(verdict, rule, options)
    if options and suggestion is not None:
        lines.append(f"  Smallest tolerance that passes, any one of: {', '.join(str(option) for option in options)}")
        accept = f'  To accept it, use tolerance="{suggestion}"'
        if kind == "integer" and isinstance(suggestion.rule, Ulp):
            accept += " (on integers, ulp(n) allows a difference of up to n units)"
        lines.append(accept)
    return "\n".join(lines)
