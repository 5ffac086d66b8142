"""How fast is ``compare``, next to the comparators people already use?

Builds 20 million float32 pairs with one element in seven moved by 1 ULP and times, in this one
process, ``detharness.compare.compare`` (every statistic on), ``numpy.testing.assert_array_max_ulp``,
``torch.testing.assert_close`` (skipped if torch is missing) and a plain copy of one array. Prints
each time (best of ``--repeat``) and the ratios, then the peak extra memory of one ``compare``:
tracemalloc's peak (numpy reports its allocations to tracemalloc) and the peak resident memory
above what the process held before (Linux: the high-water mark is reset through
/proc/self/clear_refs). Goals: at least 5x faster than numpy's assert_array_max_ulp, 2x faster than
torch's assert_close, under 64 MB of extra memory.

    python benchmarks/compare_speed.py [--elements 20000000] [--moved-every 7] [--repeat 5] [--threads N]

``--moved-every 1`` moves every element: the slow path, with no bitwise-equal elements to skip.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from detharness.compare import compare, scan

GOAL_VS_NUMPY = 5.0
GOAL_VS_TORCH = 2.0
GOAL_MEMORY_MB = 64.0


def best_time(action: Callable[[], Any], repeat: int) -> float:
    """The fastest of ``repeat`` runs: the least disturbed by everything else on the machine."""
    times = []
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_resident_growth(action: Callable[[], Any]) -> float | None:
    """MB of resident memory at the peak of ``action`` above the resident memory before it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    except OSError:
        return None
    before = _status_kib("VmRSS")
    action()
    peak = _status_kib("VmHWM")
    if before is None or peak is None:
        return None
    return (peak - before) / 1024


def make_pairs(elements: int, moved_every: int) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(0)
    expected = generator.standard_normal(elements, dtype=np.float32)
    actual = expected.copy()
    actual[::moved_every] = np.nextafter(actual[::moved_every], np.float32(np.inf))
    return expected, actual


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--elements", type=int, default=20_000_000, help="Number of float32 pairs")
    parser.add_argument("--moved-every", type=int, default=7, help="Move one element in this many by 1 ULP")
    parser.add_argument("--repeat", type=int, default=5, help="Runs per timing; the best is kept")
    parser.add_argument("--threads", type=int, default=None, help="Threads for compare (default: every core)")
    options = parser.parse_args(argv)

    expected, actual = make_pairs(options.elements, options.moved_every)
    threads = options.threads or scan.available_cores()
    every_core = scan.available_cores
    scan.available_cores = lambda: threads
    try:
        verdict = compare(expected, actual, "ulp(1)")
        assert verdict.status == "close" and verdict.max_ulp == 1, verdict.message
        resident_mb = peak_resident_growth(lambda: compare(expected, actual, "ulp(1)"))
        tracemalloc.start()
        compare(expected, actual, "ulp(1)")
        traced_mb = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        timings = {"compare": best_time(lambda: compare(expected, actual, "ulp(1)"), options.repeat)}
    finally:
        scan.available_cores = every_core
    timings["copy of one array"] = best_time(expected.copy, options.repeat)
    timings["numpy assert_array_max_ulp"] = best_time(
        lambda: np.testing.assert_array_max_ulp(expected, actual, maxulp=1), options.repeat
    )
    try:
        import torch
    except ImportError:
        print("torch is not installed: skipping torch.testing.assert_close", file=sys.stderr)
    else:
        expected_tensor, actual_tensor = torch.from_numpy(expected), torch.from_numpy(actual)
        timings["torch assert_close"] = best_time(
            lambda: torch.testing.assert_close(actual_tensor, expected_tensor), options.repeat
        )

    print(
        f"{options.elements:,} float32 pairs, one in {options.moved_every} moved by 1 ULP; "
        f"best of {options.repeat}; compare on {threads} thread(s)"
    )
    for name, seconds in timings.items():
        print(f"  {name:<28} {seconds * 1000:8.1f} ms")
    own = timings["compare"]
    versus_numpy = timings["numpy assert_array_max_ulp"] / own
    print(f"compare is {versus_numpy:.1f}x faster than numpy assert_array_max_ulp (goal {GOAL_VS_NUMPY:g}x)")
    if "torch assert_close" in timings:
        versus_torch = timings["torch assert_close"] / own
        print(f"compare is {versus_torch:.1f}x faster than torch assert_close (goal {GOAL_VS_TORCH:g}x)")
    print(f"compare takes {own / timings['copy of one array']:.1f}x the time of a copy of one array")
    resident = "n/a" if resident_mb is None else f"{resident_mb:.1f} MB"
    print(f"peak extra memory: {traced_mb:.1f} MB traced, {resident} resident (goal < {GOAL_MEMORY_MB:g} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
