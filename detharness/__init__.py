"""detharness: find where the same computation gives different numbers across backends,
devices, library versions and serialization round trips."""

from __future__ import annotations

__version__ = "0.1.0"

from detharness.backends.base import UnsupportedVariant  # noqa: E402
from detharness.cases import Case, KnownDivergence, Registry, case  # noqa: E402
from detharness.compare import Status, Tolerance, Verdict, compare, ulp_distance  # noqa: E402

__all__ = [
    "Case",
    "KnownDivergence",
    "Registry",
    "Status",
    "Tolerance",
    "UnsupportedVariant",
    "Verdict",
    "__version__",
    "case",
    "compare",
    "ulp_distance",
]
