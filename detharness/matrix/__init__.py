"""``detharness matrix``: the same cases under several environment profiles, then an N-way compare.

A profiles file (TOML, see ``ci/profiles.toml``) declares what changes between runs on one machine:

    [matrix]
    baseline = "baseline"            # optional; default: the first profile
    keyword = "softmax and torch"    # optional -k; cases, tags, backends, device, timeout too

    [profiles.baseline]

    [profiles.aten-default]
    env = { ATEN_CPU_CAPABILITY = "default" }

    [profiles.numpy-2.2]
    pins = "pins/numpy-2.2.txt"      # exact pins, installed into an overlay

Each profile runs ``python -m detharness run`` in its own process, with its variables set and, for
pins, an overlay first on ``PYTHONPATH``: the pinned packages installed with ``pip install --no-deps
--target`` into a folder of their own, so a version profile needs no virtual environment of its
own and leaves the installed one alone. Overlays live in a cache, keyed by a hash of the pins and
the interpreter, and are reused while their stamp matches. Every profile after the first replays the
first one's inputs (``--inputs-from``), so a numpy version that draws other random numbers does not
pass for a numerical change.

A profile that fails to set up (pip cannot install a pin) or to run is reported with the reason and
the rest go on; the bundles that exist are compared with :mod:`detharness.attribution`.

Layout: :mod:`.profiles` (the profiles file), :mod:`.overlays` (pinned versions), :mod:`.emulation`
(emulated architectures: aarch64 under QEMU), :mod:`.run` (running the profiles and the report).
"""

from __future__ import annotations

from detharness.matrix.overlays import (
    PIP_TIMEOUT,
    STAMP,
    SetupError,
    default_overlay_cache,
    ensure_overlay,
    overlay_key,
)
from detharness.matrix.profiles import (
    DEFAULT_PROFILE_TIMEOUT,
    MATRIX_KEYS,
    PROFILE_KEYS,
    MatrixSpec,
    Pin,
    Profile,
    ProfileError,
    load_profiles,
    parse_pins,
    parse_profiles,
)
from detharness.matrix.run import (
    DEFAULT_VARIANT_TIMEOUT,
    EMULATION_SLOWDOWN,
    RAN_STATUSES,
    ProfileOutcome,
    _check_outcome,
    array_source,
    matrix_report,
    profile_environment,
    reproduce_line,
    run_command,
    run_matrix,
    shown_path,
)

__all__ = [
    "DEFAULT_PROFILE_TIMEOUT", "DEFAULT_VARIANT_TIMEOUT", "EMULATION_SLOWDOWN", "MATRIX_KEYS", "PIP_TIMEOUT",
    "PROFILE_KEYS", "RAN_STATUSES", "STAMP", "MatrixSpec", "Pin", "Profile", "ProfileError", "ProfileOutcome",
    "SetupError", "_check_outcome", "array_source", "default_overlay_cache", "ensure_overlay", "load_profiles",
    "matrix_report", "overlay_key", "parse_pins", "parse_profiles", "profile_environment", "reproduce_line", "run_command",
    "run_matrix",
    "shown_path",
]
