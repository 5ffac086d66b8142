"""detharness: find where the same computation gives different numbers across backends,
devices, library versions and serialization round trips.

What a user imports is here: the case API (``case``, ``include``, ``Context``,
``roundtrip_modes``, ``UnsupportedVariant``, ``register_backend``, ``from_file`` for tolerances
written by ``detharness tolerances --write``), the comparators (``compare``,
``ulp_distance``, ``Tolerance``) and the results they give (``Status``, ``Verdict``, ``Result``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

from detharness.backends import Backend, register_backend
from detharness.backends.base import UnsupportedVariant
from detharness.cases import Case, Context, KnownDivergence, Registry, case, include
from detharness.compare import Status, Tolerance, Verdict, compare, ulp_distance
from detharness.results import Outcome, Result
from detharness.roundtrip import roundtrip_modes

if TYPE_CHECKING:
    from detharness.tolerances import from_file

__all__ = [
    "Backend",
    "Case",
    "Context",
    "KnownDivergence",
    "Outcome",
    "Registry",
    "Result",
    "Status",
    "Tolerance",
    "UnsupportedVariant",
    "Verdict",
    "__version__",
    "case",
    "compare",
    "from_file",
    "include",
    "register_backend",
    "roundtrip_modes",
    "ulp_distance",
]


def __getattr__(name: str) -> object:
    # from_file (detharness.tolerances) imports the bundle reader and tabulate: every case file
    # imports detharness, and only the ones that load a tolerances file need them.
    if name == "from_file":
        from detharness.tolerances import from_file

        return from_file
    raise AttributeError(f"module 'detharness' has no attribute {name!r}")
