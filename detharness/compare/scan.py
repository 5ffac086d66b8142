"""One chunked pass over a pair of numeric arrays, gathering every statistic a Verdict reports.

Why chunks: the arrays compared are model outputs, up to hundreds of millions of elements. Whole-
array temporaries (a uint64 distance per element, a float64 copy of each side) would cost several
times the inputs' memory. Working on ``CHUNK_ELEMENTS`` at a time keeps the extra memory bounded
(a few MB per thread, whatever the array size) and each chunk in cache between the steps.

Why threads: numpy releases the GIL inside its loops, so threads working on alternate chunks use
every core. Each thread keeps its own :class:`Tally`; tallies merge at the end by rules that do not
depend on which thread saw which chunk (sums in Python ints, maxima with ties broken by position),
so the result is the same on every run: a determinism harness had better be deterministic itself.

Why a fast path: most outputs agree bitwise in most places. A chunk whose bytes are all equal is
skipped after one integer comparison; when few of its elements differ, only those are gathered and
examined, so the float64 arithmetic runs on the differing elements alone.

The 99th-percentile ULP distance is exact (nearest rank). Each chunk's distances are sorted (numpy
sorts integers with SIMD, faster than ``bincount``), which gives exact counts of every distance
below ``EXACT_ULP_TABLE`` and the power-of-two histogram by binary search. Larger distances feed a
:class:`LargestValues` that keeps only as many values as can lie at or above the percentile (1% of
the elements). Should that need more than ``TAIL_CAPACITY`` values per thread (an output of over
6.5 million elements with more than 65,536 distances past the table), the percentile is found
instead by selection passes over the data (:func:`select_kth_largest`): one counts the top 16 bits
of every distance in a 65,536-bin histogram, the next gathers the few under the chosen bin, so
memory stays bounded and the answer exact, at the price of usually two more passes. The smallest
budgets that pass when a fraction of the elements may miss (the (allowed + 1)-th largest ULP,
absolute and relative error) use the same machinery.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from detharness.compare.tolerance import AllOf, AnyOf, Close, Exact, Rule, Scaled, Tolerance, Ulp
from detharness.compare.ulp import native_distance, round_to_dtype

# 256K elements: 1 MB per float32 side; the float64 temporaries of a dense chunk live in L2/L3.
CHUNK_ELEMENTS = 1 << 18
# Distances below this are counted exactly, one table entry per value.
EXACT_ULP_TABLE = 1 << 12
# How many values one LargestValues may hold per thread before falling back to radix selection.
TAIL_CAPACITY = 1 << 16
# How many of the worst (or first structural) elements a Verdict lists.
SHOWN_ELEMENTS = 5
# Gathering the differing elements pays while at most this share of a chunk differs.
_COMPACT_BELOW = 0.25

_UNSIGNED_OF_WIDTH: dict[int, Any] = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
# Bucket edges of the power-of-two histogram past the exact table: 2**12, 2**13, ... 2**63.
_LARGE_EDGES = np.array([1 << bits for bits in range(EXACT_ULP_TABLE.bit_length() - 1, 64)], np.uint64)


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity call (macOS, Windows)
        return max(1, os.cpu_count() or 1)


class Workspace:
    """One thread's reusable chunk-sized buffers, by name and dtype.

    Why: a fresh megabyte-sized numpy array per step costs more than the step itself. glibc hands
    such blocks back to the kernel when they are freed and takes new pages (page faults) for the
    next one; on this project's machine that made a dense chunk five times slower. Buffers reused
    across chunks keep the memory bounded and warm. A buffer is valid until the next chunk.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, np.dtype[Any]], np.ndarray] = {}

    def take(self, name: str, dtype: Any, size: int) -> np.ndarray:
        key = (name, np.dtype(dtype))
        buffer = self._buffers.get(key)
        if buffer is None or buffer.size < size:
            # Rounded up to an eighth of a chunk, so that varying sizes rarely reallocate.
            step = CHUNK_ELEMENTS // 8
            buffer = np.empty(-(-size // step) * step, key[1])
            self._buffers[key] = buffer
        return buffer[:size]

    def cast(self, name: str, values: np.ndarray, dtype: Any) -> np.ndarray:
        """``values.astype(dtype)`` into a reused buffer."""
        buffer = self.take(name, dtype, values.size)
        np.copyto(buffer, values.reshape(-1), casting="unsafe")
        return buffer


@dataclass
class ElementRow:
    """One element shown in a Verdict: where it is, both values, and how far apart."""

    position: int
    expected: Any
    actual: Any
    ulp: int | None
    abs_error: float
    rel_error: float

    def sort_key(self) -> tuple[int, int]:
        # Largest distance first, then the earliest position: the same order whoever found it.
        return (-(self.ulp or 0), self.position)


@dataclass
class ChunkErrors:
    """What one chunk's examined elements showed. Elements not examined have equal bytes."""

    start: int
    offsets: np.ndarray | None  # of the examined elements within the chunk; None: all of them
    expected: np.ndarray  # examined elements, original dtype (for reporting)
    actual: np.ndarray
    distance: np.ndarray  # ULP (or integer) distance, unsigned
    abs_error: np.ndarray  # float64
    rel_error: np.ndarray  # float64
    max_abs: float  # over valid elements
    max_rel: float
    failing: np.ndarray | None  # bool: misses the rule (structural excluded); None: none fail
    structural: np.ndarray | None  # bool, or None when the chunk's NaN/inf patterns agree
    nan_vs_number: np.ndarray | None  # bool, or None as above
    bytes_differ: int  # elements of the chunk whose bytes differ
    scale: float  # largest finite |expected| in the whole chunk

    def positions(self, selected: np.ndarray) -> np.ndarray:
        """Flat positions in the whole array of the examined elements at ``selected``."""
        local = selected if self.offsets is None else self.offsets[selected]
        return local.astype(np.int64) + self.start

    def valid(self) -> np.ndarray | None:
        """Mask of elements with a meaningful distance (not NaN against a number); None: all."""
        return None if self.nan_vs_number is None else ~self.nan_vs_number


class LargestValues:
    """The ``keep`` largest of a stream of non-negative integers, in bounded memory.

    Values equal to the smallest kept one are dropped once ``keep`` are held: they cannot change
    the k-th largest for any ``k <= keep``. If holding them would take more than ``capacity``
    values, the object gives up (``overflowed``) and the caller selects by extra passes instead.
    """

    def __init__(self, keep: int, capacity: int | None = None) -> None:
        self.keep = keep
        self.capacity = TAIL_CAPACITY if capacity is None else capacity
        self.parts: list[np.ndarray] = []
        self.held = 0
        self.threshold: int | None = None
        self.overflowed = False

    def add(self, values: np.ndarray, already_sorted: bool = False) -> None:
        if self.overflowed or self.keep == 0 or values.size == 0:
            return
        if self.threshold is not None:
            if already_sorted:
                values = values[np.searchsorted(values, values.dtype.type(self.threshold), side="right") :]
            else:
                values = values[values > self.threshold]
        if values.size > self.keep:  # only the chunk's own top ``keep`` can matter
            values = (
                values[-self.keep :]
                if already_sorted
                else np.partition(values, values.size - self.keep)[values.size - self.keep :]
            )
        if values.size == 0:
            return
        self.parts.append(values.astype(np.uint64))
        self.held += values.size
        # Pruning at twice what may be kept makes its cost proportional to the values added.
        if self.held > 2 * min(self.keep, self.capacity):
            self._prune()

    def _prune(self) -> None:
        if not self.parts:
            return
        values = np.concatenate(self.parts) if len(self.parts) != 1 else self.parts[0]
        if values.size > self.keep:
            values = np.partition(values, values.size - self.keep)[values.size - self.keep :]
            self.threshold = int(values.min())
        if values.size > self.capacity:
            self.overflowed = True
            self.parts, self.held = [], 0
            return
        self.parts, self.held = [values], values.size

    def merge(self, other: LargestValues) -> None:
        self.overflowed = self.overflowed or other.overflowed
        if self.overflowed:
            self.parts, self.held = [], 0
            return
        self.parts.extend(other.parts)
        self.held += other.held
        self._prune()

    def kth_largest(self, k: int) -> int | None:
        """The k-th largest value seen (1-based), 0 if fewer than k; None if overflowed."""
        self._prune()
        if self.overflowed:
            return None
        values = self.parts[0] if self.parts else np.empty(0, np.uint64)
        if k > values.size:
            return 0
        return int(np.partition(values, values.size - k)[values.size - k])


def _flat_view(array: np.ndarray) -> np.ndarray | None:
    return array.reshape(-1) if array.flags.c_contiguous else None


def _for_arithmetic(values: np.ndarray, workspace: Workspace, name: str) -> np.ndarray:
    """16-bit floats widened to float32 (exactly): numpy's float16 and ml_dtypes' bfloat16 loops
    are slow (a bfloat16 ``max`` costs 5 ns an element), float32's are SIMD."""
    if values.dtype.kind != "f" or values.dtype.itemsize == 2:
        return workspace.cast(name, values, np.float32)
    return values


def _largest_finite_magnitude(values: np.ndarray, workspace: Workspace) -> float:
    if values.size == 0:
        return 0.0
    if values.dtype == np.bool_:
        return float(values.any())
    if values.dtype.kind not in "iu":
        values = _for_arithmetic(values, workspace, "scale")
    largest = max(abs(float(np.max(values))), abs(float(np.min(values))))
    if math.isfinite(largest):
        return largest
    finite = values[np.isfinite(values)]
    return float(np.max(np.abs(finite.astype(np.float64)))) if finite.size else 0.0


class PairScanner:
    """Reads two same-shaped numeric arrays chunk by chunk and measures how they differ.

    ``kind`` is "float" (float16, bfloat16, float32, float64, maybe two different ones) or
    "integer" (integers and bools: the distance is ``|actual - expected|``).
    """

    def __init__(self, expected: np.ndarray, actual: np.ndarray, kind: str, tolerance: Tolerance) -> None:
        self.expected = expected
        self.actual = actual
        self.kind = kind
        self.tolerance = tolerance
        self.total = int(actual.size)
        self.same_dtype = expected.dtype.newbyteorder("=") == actual.dtype.newbyteorder("=")
        self.scale: float | None = None  # set before the pass when the rule needs it
        self._expected_flat = _flat_view(expected)
        self._actual_flat = _flat_view(actual)
        self._bits = _UNSIGNED_OF_WIDTH[actual.dtype.itemsize]
        # Integers are widened to 64 bits, signed or not, so that no difference overflows.
        self._wide = np.uint64 if actual.dtype.kind in "ub" else np.int64

    def chunks(self) -> range:
        return range(0, self.total, CHUNK_ELEMENTS)

    def _read(self, flat: np.ndarray | None, array: np.ndarray, start: int) -> np.ndarray:
        stop = min(start + CHUNK_ELEMENTS, self.total)
        # A strided array has no flat view; .flat copies just this chunk, so memory stays bounded.
        chunk = flat[start:stop] if flat is not None else np.asarray(array.flat[start:stop])
        if not chunk.dtype.isnative:
            chunk = chunk.astype(chunk.dtype.newbyteorder("="))
        return chunk

    def largest_finite_magnitude(self, start: int, workspace: Workspace) -> float:
        return _largest_finite_magnitude(self._read(self._expected_flat, self.expected, start), workspace)

    def examine(self, start: int, workspace: Workspace) -> ChunkErrors | float:
        """The chunk at ``start``: its errors, or just its scale if its bytes are all equal."""
        expected = self._read(self._expected_flat, self.expected, start)
        actual = self._read(self._actual_flat, self.actual, start)
        size = actual.size
        scale = _largest_finite_magnitude(expected, workspace) if self.scale is None else 0.0
        offsets: np.ndarray | None = None
        bytes_equal: np.ndarray | None = None  # None: every examined element differs
        if self.same_dtype:
            differ = np.not_equal(
                expected.view(self._bits), actual.view(self._bits), out=workspace.take("differ", bool, size)
            )
            bytes_differ = int(np.count_nonzero(differ))
            if bytes_differ == 0:
                return scale
            if bytes_differ <= _COMPACT_BELOW * size:
                offsets = np.flatnonzero(differ)
                expected = np.take(expected, offsets, out=workspace.take("expected", expected.dtype, offsets.size))
                actual = np.take(actual, offsets, out=workspace.take("actual", actual.dtype, offsets.size))
            else:
                bytes_equal = np.logical_not(differ, out=differ)
            reference = expected
        else:
            # ULPs are counted in the candidate's format, on the reference rounded to it; exact
            # means equal to that rounded reference.
            reference = round_to_dtype(expected, actual.dtype)
            bytes_equal = np.equal(
                reference.view(self._bits), actual.view(self._bits), out=workspace.take("differ", bool, size)
            )
            bytes_differ = size - int(np.count_nonzero(bytes_equal))
        if self.kind == "float":
            found = self._float_errors(expected, actual, reference, workspace)
        else:
            found = self._integer_errors(expected, actual, workspace)
        distance, abs_error, rel_error, magnitude, max_abs, max_rel, structural, nan_vs_number = found
        passing = self._passing(self.tolerance.rule, distance, abs_error, magnitude, bytes_equal, workspace, [0])
        failing: np.ndarray | None = None
        if np.count_nonzero(passing) != passing.size:
            failing = np.logical_not(passing, out=passing)
            if structural is not None:
                failing &= ~structural
        return ChunkErrors(
            start=start,
            offsets=offsets,
            expected=expected,
            actual=actual,
            distance=distance,
            abs_error=abs_error,
            rel_error=rel_error,
            max_abs=max_abs,
            max_rel=max_rel,
            failing=failing,
            structural=structural,
            nan_vs_number=nan_vs_number,
            bytes_differ=bytes_differ,
            scale=scale,
        )

    def _float_errors(
        self, expected: np.ndarray, actual: np.ndarray, reference: np.ndarray, workspace: Workspace
    ) -> tuple[Any, ...]:
        size = actual.size
        signed = np.dtype(f"int{8 * actual.dtype.itemsize}")
        distance = native_distance(
            actual,
            reference,
            (
                workspace.take("distance", signed, size),
                workspace.take("fill", signed, size),
                workspace.take("ordinals", signed, size),
            ),
        )
        expected64 = workspace.cast("expected64", _for_arithmetic(expected, workspace, "expected32"), np.float64)
        abs_error = workspace.cast("abs", _for_arithmetic(actual, workspace, "actual32"), np.float64)
        np.subtract(abs_error, expected64, out=abs_error)
        np.abs(abs_error, out=abs_error)
        max_abs = float(abs_error.max()) if abs_error.size else 0.0
        structural = nan_vs_number = valid = both_nan = None
        # A non-finite maximum means a NaN or an infinity somewhere (or a float64 overflow): the
        # common all-finite chunk skips the pattern checks entirely.
        if not math.isfinite(max_abs):
            actual64 = _for_arithmetic(actual, workspace, "actual32").astype(np.float64)
            expected_nan = np.isnan(expected64)
            actual_nan = np.isnan(actual64)
            nan_vs_number = expected_nan ^ actual_nan
            either_nan = expected_nan | actual_nan
            same_value = expected64 == actual64
            infinite = np.isinf(expected64) | np.isinf(actual64)
            # NaN against a number, or an infinity against anything but the same infinity.
            structural = nan_vs_number | (infinite & ~same_value & ~either_nan)
            # Two NaNs, or two equal infinities (inf - inf is NaN), agree: no error at all.
            both_nan = expected_nan & actual_nan
            abs_error[both_nan | (infinite & same_value)] = 0.0
            distance[both_nan] = 0
            if not structural.any():
                structural = nan_vs_number = None
            else:
                valid = ~nan_vs_number
            kept = abs_error if valid is None else abs_error[valid]
            max_abs = float(kept.max()) if kept.size else 0.0
        magnitude = np.abs(expected64, out=expected64)
        if both_nan is not None:
            # A NaN reference would make close()'s budget NaN, failing two NaNs that agree; give
            # them magnitude 0 (budget atol, error 0). Fixed here, where NaNs are known to exist,
            # rather than by a pass over every budget.
            magnitude[both_nan] = 0.0
        rel_error = np.divide(abs_error, magnitude, out=workspace.take("rel", np.float64, size))
        max_rel = float(rel_error.max()) if rel_error.size else 0.0
        if math.isnan(max_rel) or valid is not None:
            # 0 / 0 (a signed zero against the other, or a NaN's error) has no relative error.
            rel_error[np.isnan(rel_error)] = 0.0
            kept = rel_error if valid is None else rel_error[valid]
            max_rel = float(kept.max()) if kept.size else 0.0
        return distance, abs_error, rel_error, magnitude, max_abs, max_rel, structural, nan_vs_number

    def _integer_errors(self, expected: np.ndarray, actual: np.ndarray, workspace: Workspace) -> tuple[Any, ...]:
        if expected.dtype == np.bool_:
            expected, actual = expected.view(np.uint8), actual.view(np.uint8)
        size = actual.size
        wide_expected = workspace.cast("wide_expected", expected, self._wide)
        wide_actual = workspace.cast("wide_actual", actual, self._wide)
        # max - min can exceed int64's range; the wrapped difference read as uint64 is exact.
        larger = np.maximum(wide_expected, wide_actual, out=workspace.take("distance", self._wide, size))
        np.minimum(wide_expected, wide_actual, out=wide_actual)
        np.subtract(larger, wide_actual, out=larger)
        distance = larger.view(np.uint64)
        abs_error = workspace.cast("abs", distance, np.float64)
        magnitude = np.abs(
            workspace.cast("expected64", expected, np.float64), out=workspace.take("expected64", np.float64, size)
        )
        rel_error = np.divide(abs_error, magnitude, out=workspace.take("rel", np.float64, size))
        rel_error[np.isnan(rel_error)] = 0.0  # 0 / 0: equal zeros
        max_abs = float(abs_error.max()) if abs_error.size else 0.0
        max_rel = float(rel_error.max()) if rel_error.size else 0.0
        return distance, abs_error, rel_error, magnitude, max_abs, max_rel, None, None

    def _passing(
        self,
        rule: Rule,
        distance: np.ndarray,
        abs_error: np.ndarray,
        magnitude: np.ndarray,
        bytes_equal: np.ndarray | None,
        workspace: Workspace,
        slot: list[int],
    ) -> np.ndarray:
        """Which examined elements meet ``rule``, in a buffer of its own (``slot`` numbers them)."""
        size = distance.size
        slot[0] += 1
        result = workspace.take(f"passing{slot[0]}", bool, size)
        if isinstance(rule, Exact):
            if bytes_equal is None:
                result.fill(False)
            else:
                np.copyto(result, bytes_equal)
        elif isinstance(rule, Ulp):
            if rule.budget >= np.iinfo(distance.dtype).max:
                result.fill(True)
            else:
                np.less_equal(distance, distance.dtype.type(rule.budget), out=result)
        elif isinstance(rule, Close):
            budget = np.multiply(magnitude, rule.rtol, out=workspace.take("budget", np.float64, size))
            budget += rule.atol
            np.less_equal(abs_error, budget, out=result)
        elif isinstance(rule, Scaled):
            assert self.scale is not None, "the scale is measured before a scaled() rule is judged"
            np.less_equal(abs_error, rule.factor * self.scale, out=result)
        elif isinstance(rule, (AnyOf, AllOf)):
            combine = np.logical_or if isinstance(rule, AnyOf) else np.logical_and
            np.copyto(
                result, self._passing(rule.rules[0], distance, abs_error, magnitude, bytes_equal, workspace, slot)
            )
            for part in rule.rules[1:]:
                combine(
                    result,
                    self._passing(part, distance, abs_error, magnitude, bytes_equal, workspace, slot),
                    out=result,
                )
        else:
            raise TypeError(f"unknown rule {rule!r}")
        return result


def _top_rows(distance: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` largest distances, ties to the earliest, largest first."""
    if distance.size > count:
        kth = np.partition(distance, distance.size - count)[distance.size - count]
        above = np.flatnonzero(distance > kth)
        ties = np.flatnonzero(distance == kth)[: count - above.size]
        chosen = np.concatenate([above, ties])
    else:
        chosen = np.arange(distance.size)
    order = np.lexsort((chosen, ~distance[chosen].astype(np.uint64)))
    return chosen[order]


def _exact_sum(values: np.ndarray) -> int:
    """The sum of unsigned values as a Python int, even where a uint64 sum would overflow."""
    if values.size == 0:
        return 0
    if values.dtype.itemsize < 8 or int(values[-1]) < (1 << 63) // values.size:  # sorted: last is max
        return int(values.sum(dtype=np.uint64))
    high = int((values >> np.uint64(32)).sum(dtype=np.uint64))
    low = int((values & np.uint64(0xFFFFFFFF)).sum(dtype=np.uint64))
    return (high << 32) + low


@dataclass
class Tally:
    """Running statistics of one thread's chunks; :meth:`merge` joins two."""

    p99_keep: int
    fraction_keep: int
    examined: int = 0
    bytes_differ: int = 0
    scale: float = 0.0
    ulp_sum: int = 0
    ulp_table: np.ndarray = field(default_factory=lambda: np.zeros(EXACT_ULP_TABLE, np.int64))
    large_buckets: np.ndarray = field(default_factory=lambda: np.zeros(65, np.int64))
    max_row: ElementRow | None = None
    max_abs: float = 0.0
    max_rel: float = 0.0
    nan_vs_number: int = 0
    structural: int = 0
    structural_rows: list[ElementRow] = field(default_factory=list)
    failing: int = 0
    first_failing: int | None = None
    worst_rows: list[ElementRow] = field(default_factory=list)
    large_ulps: LargestValues = field(init=False)
    keep_ulp: LargestValues = field(init=False)
    keep_abs: LargestValues = field(init=False)
    keep_rel: LargestValues = field(init=False)
    workspace: Workspace = field(default_factory=Workspace, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.large_ulps = LargestValues(self.p99_keep)
        # With a fraction of elements allowed to miss, the smallest passing budget is the
        # (allowed + 1)-th largest error; without one it is simply the maximum.
        keep = self.fraction_keep if self.fraction_keep > 1 else 0
        self.keep_ulp = LargestValues(keep)
        self.keep_abs = LargestValues(keep)
        self.keep_rel = LargestValues(keep)

    def add(self, found: ChunkErrors | float) -> None:
        if not isinstance(found, ChunkErrors):
            self.scale = max(self.scale, found)
            return
        self.scale = max(self.scale, found.scale)
        self.examined += found.distance.size
        self.bytes_differ += found.bytes_differ
        valid = found.valid()
        distance, abs_error, rel_error = found.distance, found.abs_error, found.rel_error
        if valid is not None:
            distance, abs_error, rel_error = distance[valid], abs_error[valid], rel_error[valid]
            self.nan_vs_number += found.distance.size - distance.size
        if distance.size:
            self._add_distances(found, distance, valid)
            self.max_abs = max(self.max_abs, found.max_abs)
            self.max_rel = max(self.max_rel, found.max_rel)
            if self.keep_abs.keep:
                self.keep_abs.add(abs_error.view(np.uint64))
                self.keep_rel.add(rel_error.view(np.uint64))
        if found.structural is not None:
            where = np.flatnonzero(found.structural)
            self.structural += where.size
            rows = [self._row(found, int(i)) for i in where[:SHOWN_ELEMENTS]]
            self.structural_rows = sorted(self.structural_rows + rows, key=lambda row: row.position)[:SHOWN_ELEMENTS]
        if found.failing is not None:
            failing = np.flatnonzero(found.failing)
            if failing.size:
                self.failing += failing.size
                first = int(found.positions(failing[:1])[0])
                self.first_failing = first if self.first_failing is None else min(self.first_failing, first)
                chosen = failing[_top_rows(found.distance[failing], SHOWN_ELEMENTS)]
                rows = [self._row(found, int(i)) for i in chosen]
                self.worst_rows = sorted(self.worst_rows + rows, key=ElementRow.sort_key)[:SHOWN_ELEMENTS]

    def _add_distances(self, found: ChunkErrors, distance: np.ndarray, valid: np.ndarray | None) -> None:
        ordered = self.workspace.cast("sorted", distance, distance.dtype)
        ordered.sort()
        largest = int(ordered[-1])
        small_end = int(np.searchsorted(ordered, ordered.dtype.type(min(EXACT_ULP_TABLE, np.iinfo(ordered.dtype).max))))
        if largest < EXACT_ULP_TABLE:
            small_end = ordered.size
        if small_end:
            top_small = int(ordered[small_end - 1])
            edges = np.searchsorted(ordered[:small_end], np.arange(top_small + 2, dtype=ordered.dtype))
            counts = np.diff(edges)
            self.ulp_table[: top_small + 1] += counts
            self.ulp_sum += int(counts @ np.arange(top_small + 1, dtype=np.int64))
        large = ordered[small_end:]
        if large.size:
            edges = np.searchsorted(large.astype(np.uint64, copy=False), _LARGE_EDGES)
            # edges[i] counts values below 2**(12 + i): bucket of bit length 12 + i holds the rest.
            bounds = np.append(edges, large.size)
            self.large_buckets[EXACT_ULP_TABLE.bit_length() :] += np.diff(bounds)
            self.ulp_sum += _exact_sum(large)
            self.large_ulps.add(large, already_sorted=True)
        if self.keep_ulp.keep:
            self.keep_ulp.add(ordered, already_sorted=True)
        if self.max_row is None or largest > (self.max_row.ulp or 0):
            at = int(np.argmax(distance))
            if valid is not None:
                at = int(np.flatnonzero(valid)[at])
            self.max_row = self._row(found, at)

    @staticmethod
    def _row(found: ChunkErrors, index: int) -> ElementRow:
        position = int(found.positions(np.array([index]))[0])
        nan_vs_number = found.nan_vs_number is not None and bool(found.nan_vs_number[index])
        return ElementRow(
            position=position,
            expected=found.expected[index],
            actual=found.actual[index],
            ulp=None if nan_vs_number else int(found.distance[index]),
            abs_error=float(found.abs_error[index]),
            rel_error=float(found.rel_error[index]),
        )

    def merge(self, other: Tally) -> None:
        self.examined += other.examined
        self.bytes_differ += other.bytes_differ
        self.scale = max(self.scale, other.scale)
        self.ulp_sum += other.ulp_sum
        self.ulp_table += other.ulp_table
        self.large_buckets += other.large_buckets
        if other.max_row is not None and (self.max_row is None or other.max_row.sort_key() < self.max_row.sort_key()):
            self.max_row = other.max_row
        self.max_abs = max(self.max_abs, other.max_abs)
        self.max_rel = max(self.max_rel, other.max_rel)
        self.nan_vs_number += other.nan_vs_number
        self.structural += other.structural
        rows = self.structural_rows + other.structural_rows
        self.structural_rows = sorted(rows, key=lambda row: row.position)[:SHOWN_ELEMENTS]
        self.failing += other.failing
        if other.first_failing is not None:
            firsts = [other.first_failing] + ([self.first_failing] if self.first_failing is not None else [])
            self.first_failing = min(firsts)
        self.worst_rows = sorted(self.worst_rows + other.worst_rows, key=ElementRow.sort_key)[:SHOWN_ELEMENTS]
        self.large_ulps.merge(other.large_ulps)
        self.keep_ulp.merge(other.keep_ulp)
        self.keep_abs.merge(other.keep_abs)
        self.keep_rel.merge(other.keep_rel)


_State = TypeVar("_State")


def for_each_chunk(
    scanner: PairScanner,
    start_state: Callable[[], _State],
    visit: Callable[[_State, int], None],
    threads: int | None = None,
) -> list[_State]:
    """Run ``visit(state, chunk_start)`` over every chunk, on up to ``threads`` threads.

    Each thread takes the next chunk from a shared counter (``next`` on an ``itertools.count`` is
    atomic under the GIL) and keeps its own state; the states come back for the caller to merge.
    """
    starts = scanner.chunks()
    workers = max(1, min(threads or available_cores(), len(starts)))
    counter = itertools.count()

    def work() -> _State:
        state = start_state()
        # Overflow, 0/0 and inf - inf are expected here and handled; errstate is per thread.
        with np.errstate(all="ignore"):
            while (index := next(counter)) < len(starts):
                visit(state, starts[index])
        return state

    if workers == 1:
        return [work()]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="detharness-compare") as pool:
        futures = [pool.submit(work) for _ in range(workers)]
        return [future.result() for future in futures]


def measure_scale(scanner: PairScanner, threads: int | None = None) -> float:
    """The largest finite magnitude of the expected array: the yardstick of ``scaled(k)``."""

    def visit(state: tuple[list[float], Workspace], start: int) -> None:
        largest, workspace = state
        largest[0] = max(largest[0], scanner.largest_finite_magnitude(start, workspace))

    states = for_each_chunk(scanner, lambda: ([0.0], Workspace()), visit, threads)
    return max(largest[0] for largest, _ in states)


def tally(scanner: PairScanner, p99_keep: int, fraction_keep: int, threads: int | None = None) -> Tally:
    """One pass over the pair, every statistic gathered."""

    def visit(state: Tally, start: int) -> None:
        state.add(scanner.examine(start, state.workspace))

    tallies = for_each_chunk(scanner, lambda: Tally(p99_keep, fraction_keep), visit, threads)
    total = tallies[0]
    for other in tallies[1:]:
        total.merge(other)
    total.workspace = Workspace()  # let the buffers go before any selection pass takes its own
    return total


@dataclass
class DigitCounts:
    """One pass's histogram of the next digit, and the range of the keys it counted."""

    counts: np.ndarray
    lowest: int = 2**64
    highest: int = -1

    def merge(self, other: DigitCounts) -> None:
        self.counts += other.counts
        self.lowest = min(self.lowest, other.lowest)
        self.highest = max(self.highest, other.highest)


@dataclass
class Selection:
    """One radix selection in progress: the k-th largest of a measure, ``key_bits`` wide.

    Each pass either counts the next 16-bit digit of the keys that share the prefix found so far,
    or, once that prefix holds at most ``TAIL_CAPACITY`` keys, collects them and finishes.
    """

    measure: str  # "ulp" (distance), "abs" or "rel" (errors through their float64 bits)
    k: int
    key_bits: int
    prefix: int = 0
    remaining_bits: int = -1
    collecting: bool = False  # the keys under the prefix are few enough to gather outright
    result: int | None = None

    def __post_init__(self) -> None:
        if self.remaining_bits < 0:
            self.remaining_bits = self.key_bits

    @property
    def done(self) -> bool:
        return self.result is not None

    @property
    def digit_bits(self) -> int:
        return min(16, self.remaining_bits)

    def matching(self, keys: np.ndarray, workspace: Workspace) -> np.ndarray:
        """The keys that share the prefix found so far."""
        if self.remaining_bits == self.key_bits:  # no prefix yet: every key (they fit key_bits)
            return keys
        high = np.right_shift(keys, np.uint64(self.remaining_bits), out=workspace.take("high", np.uint64, keys.size))
        match = np.equal(high, np.uint64(self.prefix), out=workspace.take("match", bool, keys.size))
        selected: np.ndarray = keys[match]
        return selected

    def count_digits(self, keys: np.ndarray, found: DigitCounts, workspace: Workspace) -> None:
        if keys.size == 0:
            return
        shift = np.uint64(self.remaining_bits - self.digit_bits)
        digits = np.right_shift(keys, shift, out=workspace.take("digits", np.uint64, keys.size))
        np.bitwise_and(digits, np.uint64((1 << self.digit_bits) - 1), out=digits)
        found.counts += np.bincount(digits.view(np.int64), minlength=found.counts.size)  # < 2**16: valid intp
        found.lowest = min(found.lowest, int(keys.min()))
        found.highest = max(found.highest, int(keys.max()))

    def narrow(self, found: DigitCounts) -> None:
        """Fix the next digit: the bin where the count from the top reaches k."""
        counts = found.counts
        if found.lowest == found.highest and counts.sum() >= self.k:
            # Every key under the prefix is one value (errors of exactly one ULP often are):
            # no need to read its remaining digits.
            self.result = found.lowest
            return
        from_top = np.cumsum(counts[::-1])
        position = int(np.searchsorted(from_top, self.k))
        if position >= counts.size:  # fewer than k keys: the k-th largest is 0
            self.result = 0
            return
        self.k -= int(from_top[position - 1]) if position else 0
        self.prefix = (self.prefix << self.digit_bits) | (counts.size - 1 - position)
        self.remaining_bits -= self.digit_bits
        in_bin = int(counts[counts.size - 1 - position])
        if self.remaining_bits == 0:
            self.result = self.prefix
        elif in_bin <= TAIL_CAPACITY:
            self.collecting = True

    def finish(self, collected: list[np.ndarray]) -> None:
        """The k-th largest among the keys gathered under the prefix."""
        keys = np.concatenate(collected) if collected else np.empty(0, np.uint64)
        self.result = int(np.partition(keys, keys.size - self.k)[keys.size - self.k]) if self.k <= keys.size else 0


def select_kth_largest(scanner: PairScanner, selections: list[Selection], threads: int | None = None) -> None:
    """Complete each selection by passes over the data, all selections sharing each pass.

    Used only when a :class:`LargestValues` would have needed more than ``TAIL_CAPACITY`` values.
    Usually two passes: one counts the top 16 bits of the keys, the next gathers the few keys that
    share the chosen top bits. Non-negative float64 errors order like their bits read as uint64, so
    one method serves ULPs and errors. Elements with a NaN against a number are left out, as they
    are from every statistic; elements with equal bytes have distance and error 0, which never
    decide a k-th *largest* unless fewer than k values are non-zero, and then it is 0 all the same.
    """
    while True:
        active = [selection for selection in selections if not selection.done]
        if not active:
            return

        def start_state(active: list[Selection] = active) -> tuple[list[Any], Workspace]:
            found: list[Any] = [
                [] if sel.collecting else DigitCounts(np.zeros(1 << sel.digit_bits, np.int64)) for sel in active
            ]
            return found, Workspace()

        def visit(state: tuple[list[Any], Workspace], start: int, active: list[Selection] = active) -> None:
            found, workspace = state
            errors = scanner.examine(start, workspace)
            if not isinstance(errors, ChunkErrors):
                return
            valid = errors.valid()
            for index, selection in enumerate(active):
                values = {"ulp": errors.distance, "abs": errors.abs_error, "rel": errors.rel_error}[selection.measure]
                if valid is not None:
                    values = values[valid]
                if values.dtype == np.float64:
                    keys = values.view(np.uint64)
                else:
                    keys = workspace.cast("keys", values, np.uint64)
                keys = selection.matching(keys, workspace)
                if selection.collecting:
                    found[index].append(keys.copy())  # the buffers are reused by the next chunk
                else:
                    selection.count_digits(keys, found[index], workspace)

        states = for_each_chunk(scanner, start_state, visit, threads)
        for index, selection in enumerate(active):
            parts = [state[0][index] for state in states]
            if selection.collecting:
                selection.finish([part for per_thread in parts for part in per_thread])
            else:
                for other in parts[1:]:
                    parts[0].merge(other)
                selection.narrow(parts[0])
        del states, parts  # the buffers go before the next pass takes its own


def histogram_buckets(table: np.ndarray, large_buckets: np.ndarray) -> dict[str, int]:
    """Power-of-two buckets ``0, 1, 2-3, 4-7, ...`` with their counts, empty ones left out."""
    buckets: dict[str, int] = {}
    if table[0]:
        buckets["0"] = int(table[0])
    for bits in range(1, 65):
        low, high = 1 << (bits - 1), (1 << bits) - 1
        count = int(table[low : high + 1].sum()) if high < EXACT_ULP_TABLE else int(large_buckets[bits])
        if count:
            buckets["1" if bits == 1 else f"{low}-{high}"] = count
    return buckets
