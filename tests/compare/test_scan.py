"""The chunked pass's selection machinery against sorting: kept tails and selection passes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detharness.compare import Tolerance, scan, ulp_distance


@settings(max_examples=200, deadline=None)
@given(
    batches=st.lists(st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 5), max_size=60), min_size=1, max_size=8),
    keep=st.integers(1, 40),
    capacity=st.integers(1, 60),
)
def test_largest_values_keeps_the_exact_top_or_says_it_cannot(
    batches: list[list[int]], keep: int, capacity: int
) -> None:
    kept = scan.LargestValues(keep, capacity)
    for batch in batches:
        values = np.array(batch, np.uint64)
        if len(batch) % 2:  # the sorted entry point as well as the plain one
            kept.add(np.sort(values), already_sorted=True)
        else:
            kept.add(values)
    every = sorted((value for batch in batches for value in batch), reverse=True)
    for k in range(1, keep + 1):
        found = kept.kth_largest(k)
        if found is None:
            assert min(keep, len(every)) > capacity, "gave up though it could hold them"
            return
        assert found == (every[k - 1] if k <= len(every) else 0)


def test_largest_values_merge() -> None:
    first, second = scan.LargestValues(3, 10), scan.LargestValues(3, 10)
    first.add(np.array([5, 1, 9], np.uint64))
    second.add(np.array([7, 9, 2], np.uint64))
    first.merge(second)
    assert [first.kth_largest(k) for k in (1, 2, 3)] == [9, 9, 7]
    full = scan.LargestValues(30, 2)
    full.add(np.arange(10, dtype=np.uint64))
    first.merge(full)
    assert first.kth_largest(1) is None


@pytest.mark.parametrize("measure", ["ulp", "abs", "rel"])
@pytest.mark.parametrize("capacity", [1, 8, 1000])
def test_selection_passes_find_the_kth_largest(measure: str, capacity: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ties (many errors of exactly one ULP), spread values and zeros, chunked on two threads."""
    monkeypatch.setattr(scan, "CHUNK_ELEMENTS", 300)
    monkeypatch.setattr(scan, "TAIL_CAPACITY", capacity)
    monkeypatch.setattr(scan, "available_cores", lambda: 2)
    rng = np.random.default_rng(1)
    expected = rng.standard_normal(5000).astype(np.float32)
    actual = expected.copy()
    actual[::3] = np.nextafter(actual[::3], np.float32(9))
    actual[::50] *= np.float32(1.001)
    scanner = scan.PairScanner(expected, actual, "float", Tolerance.ulp(0))
    with np.errstate(all="ignore"):
        if measure == "ulp":
            values = [int(v) for v in ulp_distance(expected, actual)]
        else:
            errors = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
            values = (errors if measure == "abs" else errors / np.abs(expected.astype(np.float64))).tolist()
    ordered = sorted(values, reverse=True)
    for k in [1, 2, 17, 100, 1667, 1700, 4999, 5000]:
        selection = scan.Selection(measure, k, 32 if measure == "ulp" else 64)
        scan.select_kth_largest(scanner, [selection])
        found = (
            selection.result if measure == "ulp" else float(np.array([selection.result], np.uint64).view(np.float64)[0])
        )
        assert found == ordered[k - 1], k


def test_workspace_reuses_and_grows() -> None:
    workspace = scan.Workspace()
    first = workspace.take("a", np.float64, 10)
    again = workspace.take("a", np.float64, 5)
    assert again.base is first.base or np.shares_memory(first, again)
    bigger = workspace.take("a", np.float64, 10 * scan.CHUNK_ELEMENTS)
    assert bigger.size == 10 * scan.CHUNK_ELEMENTS
    assert workspace.take("a", np.int32, 3).dtype == np.int32  # kept apart by dtype


def test_power_of_two_buckets() -> None:
    table = np.zeros(scan.EXACT_ULP_TABLE, np.int64)
    table[[0, 1, 2, 3, 4, 4095]] = [5, 4, 3, 2, 1, 7]
    large = np.zeros(65, np.int64)
    large[13], large[64] = 6, 1
    assert scan.histogram_buckets(table, large) == {
        "0": 5,
        "1": 4,
        "2-3": 5,
        "4-7": 1,
        "2048-4095": 7,
        "4096-8191": 6,
        "9223372036854775808-18446744073709551615": 1,
    }
