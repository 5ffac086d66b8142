"""Comparators: exact ULP distances and tolerance verdicts for every float format, fast.

Pure numpy and ml_dtypes; knows nothing of cases, backends or bundles.

    >>> from detharness.compare import compare
    >>> verdict = compare(expected, actual, "ulp(4) | close(1e-5, 1e-6)")
    >>> assert verdict, verdict.message

Modules: :mod:`~detharness.compare.ulp` (ordinals and distances),
:mod:`~detharness.compare.tolerance` (the rules and their text),
:mod:`~detharness.compare.verdict` (statuses, verdicts, JSON),
:mod:`~detharness.compare.core` (``compare``) and :mod:`~detharness.compare.scan` (the chunked pass).
"""

from __future__ import annotations

from detharness.compare.core import compare, compare_arrays
from detharness.compare.tolerance import Tolerance
from detharness.compare.ulp import float_to_ordinal, ulp_distance
from detharness.compare.verdict import Status, Verdict, worst

__all__ = [
    "Status",
    "Tolerance",
    "Verdict",
    "compare",
    "compare_arrays",
    "float_to_ordinal",
    "ulp_distance",
    "worst",
]
