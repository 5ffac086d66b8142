"""The data behind the HTML report's plots, taken from the compared arrays.

A result holds statistics; its plots need the arrays themselves. :class:`ArraySource` finds the two
sides of a result in the run records (a live run, or bundles loaded from disk), and :func:`collect`
reduces each pair to a few hundred numbers: a sample of (|reference|, |error|) points for the
scatter and a max-downsampled grid of |error| for the heatmap of a 2-D or larger output. Both are
deterministic (no random sampling) and bounded, so a report's size does not grow with its arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detharness.compare.ulp import is_ulp_float
from detharness.results import Status

#: Points of one scatter: the largest errors, then an even spread over the rest.
SCATTER_POINTS = 120
SCATTER_WORST = 40
#: Cells along each side of a heatmap at most.
HEATMAP_SIDE = 32
#: Results that get figures in one report (the worst first); the report says how many did not.
MAX_FIGURED = 100
#: Statuses whose outputs are worth a plot (a mismatch of the NaN/inf pattern still has finite
#: elements to draw): equal bytes or no outputs have nothing to draw.
PLOTTED = frozenset({Status.CLOSE, Status.KNOWN, Status.FLIPPED, Status.DIVERGED, Status.MISMATCH})


@dataclass
class ArraySource:
    """The records a report's results came from, to look their arrays up again.

    ``records`` maps a bundle label to its run record; ``default`` is the record of a result that
    names no bundle (the results of a single run). A result side is a variant id, or
    ``ENV12:VARIANT`` for results of the environment check (the environment id's first 12 digits).
    """

    records: Mapping[str, Any] = field(default_factory=dict)
    default: Any = None

    def _record(self, label: str | None, side: str) -> tuple[Any, str]:
        if label is not None and label in self.records:
            record = self.records[label]
            prefix = record.environment_id[:12] + ":"
            return record, side[len(prefix):] if side.startswith(prefix) else side
        return self.default, side

    def pair(self, result: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
        """The (baseline, candidate) arrays of a result's output, or None where either is not stored."""
        output, base, cand = result.get("output"), result.get("baseline"), result.get("candidate")
        if not output or not base or not cand:
            return None
        arrays = []
        for label, side in ((result.get("baseline_label"), base), (result.get("candidate_label"), cand)):
            record, vid = self._record(label, side)
            variant = getattr(record, "variants", {}).get(vid) if record is not None else None
            if variant is None or output not in variant.outputs:
                return None
            try:
                arrays.append(np.asarray(variant.outputs[output]))
            except Exception:  # a bundle whose array cannot be read: no plot, the result says the rest
                return None
        return arrays[0], arrays[1]


def _sig(value: float) -> float:
    return float(f"{value:.4g}")


def scatter(reference: np.ndarray, error: np.ndarray, *, points: int = SCATTER_POINTS,
            worst: int = SCATTER_WORST) -> list[list[float]]:
    """Up to ``points`` (|reference|, |error|) pairs: the ``worst`` largest errors and an even
    spread of the others, in index order; non-finite pairs are left out."""
    ref, err = np.abs(reference.ravel()), error.ravel()
    keep = np.flatnonzero(np.isfinite(ref) & np.isfinite(err))
    if keep.size > points:
        largest = keep[np.argsort(-err[keep], kind="stable")[:worst]]
        rest = np.setdiff1d(keep, largest, assume_unique=True)
        spread = rest[np.linspace(0, rest.size - 1, points - worst).astype(np.int64)] if rest.size else rest
        keep = np.union1d(largest, spread)
    return [[_sig(float(ref[i])), _sig(float(err[i]))] for i in keep]


def heatmap(error: np.ndarray, *, side: int = HEATMAP_SIDE) -> dict[str, Any] | None:
    """|error| of an output of two or more dimensions as rows x its last axis, each cell the
    largest error of the block it stands for (a lone outlier stays visible); None for 0-D/1-D."""
    if error.ndim < 2 or error.size == 0:
        return None
    grid = error.reshape(-1, error.shape[-1])
    rows, cols = grid.shape
    # Non-finite errors (a NaN against a number) are the largest there are.
    grid = np.where(np.isfinite(grid), grid, np.inf)
    row_edges = np.linspace(0, rows, min(rows, side) + 1).astype(np.int64)
    col_edges = np.linspace(0, cols, min(cols, side) + 1).astype(np.int64)
    cells = np.maximum.reduceat(np.maximum.reduceat(grid, row_edges[:-1], axis=0), col_edges[:-1], axis=1)
    finite = cells[np.isfinite(cells)]
    return {"rows": rows, "cols": cols, "shape": list(error.shape), "max": _sig(float(finite.max())) if finite.size else 0.0,
            "cells": [[_sig(float(v)) if np.isfinite(v) else "inf" for v in row] for row in cells]}


def figures(expected: np.ndarray, actual: np.ndarray) -> dict[str, Any] | None:
    """The plot data of one compared pair of float arrays of one shape, or None where there is none."""
    if expected.shape != actual.shape or expected.size == 0:
        return None
    if not all(is_ulp_float(x.dtype) for x in (expected, actual)):
        return None
    e, a = expected.astype(np.float64), actual.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.abs(a - e)
    both_nan = np.isnan(e) & np.isnan(a)
    error[both_nan] = 0.0
    return {"scatter": scatter(e, error), "heatmap": heatmap(error)}


def collect(results: Sequence[Mapping[str, Any]], source: ArraySource, *,
            limit: int = MAX_FIGURED) -> tuple[dict[int, dict[str, Any]], int]:
    """Plot data for the results worth a plot (at most ``limit``, in the given order: the report's,
    worst first), keyed by index into ``results``; and how many more were worth one."""
    out: dict[int, dict[str, Any]] = {}
    more = 0
    for index, result in enumerate(results):
        if Status(result["status"]) not in PLOTTED or not result.get("output"):
            continue
        if len(out) >= limit:
            more += 1
            continue
        pair = source.pair(result)
        data = figures(*pair) if pair is not None else None
        if data is not None:
            out[index] = data
    return out, more
