"""The typed records every module above ``compare/`` exchanges.

- :class:`Result`: one compared output (or one variant that could not be compared), the row of
  every report. Frozen; every field is present in its JSON, ``null`` where it does not apply.
- :class:`Outcome`: how running one variant ended (``ok``, ``error``, ``skipped``).
- :class:`Task`, :class:`Reply`, :class:`Hello`, :class:`VariantLog`: the messages between the
  runner and its worker processes (and the in-process and pytest paths, which run the same code).

Statuses and their severity order live in one place, :class:`~detharness.compare.Status`; the
helpers here (:func:`worst`, :func:`summarize`, :func:`failed`, :data:`DEFAULT_FAIL_ON`) are what the
CLI, attribution, the reports, the CI scripts and the pytest plugin use to rank and count them.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from detharness._io import to_jsonable
from detharness.compare import Status, worst

__all__ = ["COVERABLE", "DEFAULT_FAIL_ON", "FIELDS", "QUIET", "STATUSES", "Hello", "Outcome", "Reply", "Result", "Status", "Task",
           "VariantLog", "failed", "parse_statuses", "summarize", "worst"]

#: Every status, best first: the order of :class:`Status` is the severity order.
STATUSES: tuple[str, ...] = tuple(s.value for s in Status)
#: Statuses that make ``run``, ``compare`` and ``matrix`` exit 1 unless ``--fail-on`` says otherwise.
DEFAULT_FAIL_ON: tuple[Status, ...] = (Status.FLIPPED, Status.DIVERGED, Status.MISMATCH, Status.ERROR)
#: Statuses a reader need not look into: no failure details, no reproduce line.
QUIET: frozenset[Status] = frozenset({Status.IDENTICAL, Status.CLOSE, Status.KNOWN, Status.SKIPPED, Status.MISSING})
#: Statuses of outputs that differ beyond what the case accepts, which a declared known divergence
#: can cover (an error or a missing output it cannot).
COVERABLE: frozenset[Status] = frozenset({Status.FLIPPED, Status.DIVERGED, Status.MISMATCH})


def summarize(results: Iterable[Result]) -> dict[str, int]:
    """Counts by status, worst first."""
    counts: dict[Status, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return {s.value: n for s, n in sorted(counts.items(), key=lambda kv: -kv[0].severity)}


def failed(results: Iterable[Result], fail_on: Iterable[Status | str] = DEFAULT_FAIL_ON) -> bool:
    wanted = {Status(s) for s in fail_on}
    return any(r.status in wanted for r in results)


def parse_statuses(text: str, option: str = "--fail-on") -> list[Status]:
    """``"diverged,error"`` -> statuses; an unknown name is a usage error naming the choices."""
    from detharness.errors import UsageError

    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STATUSES]
    if unknown:
        raise UsageError(f"{option}: unknown status {unknown[0]!r}; choose from {', '.join(STATUSES)}")
    return [Status(s) for s in names]


@dataclass(frozen=True)
class Result:
    """One compared output: the row of every report and an entry of the JSON ``results``.

    The statistics are those of :class:`~detharness.compare.Verdict` (JSON-safe: non-finite numbers
    as strings). Fields filled by later capabilities are reserved here so that every result has
    every key: ``accuracy`` (against a float64 oracle), ``decision`` (flips of a consumer's
    decision), ``shift`` (distribution distance), ``first_divergence`` (the first diverging layer).
    """

    check: str
    case: str
    variant: str
    status: Status
    message: str
    output: str | None = None
    baseline: str | None = None
    candidate: str | None = None
    tolerance: str | None = None
    total: int | None = None
    mismatched: int | None = None
    max_ulp: int | None = None
    mean_ulp: float | str | None = None
    p99_ulp: int | None = None
    ulp_histogram: dict[str, int] | None = None
    max_abs: float | str | None = None
    max_rel: float | str | None = None
    max_scaled: float | str | None = None
    first_mismatch_index: list[int] | None = None
    worst_index: list[int] | None = None
    worst_expected: Any = None
    worst_actual: Any = None
    min_passing: dict[str, Any] | None = None
    env_diff: dict[str, Any] = field(default_factory=dict)
    reproduce: str | None = None
    #: The repeat check: how many distinct outputs the runs gave.
    distinct_results: int | None = None
    #: ``known``: the status the declared divergence covers, and its reason.
    underlying_status: Status | None = None
    known_reason: str | None = None
    #: A declared known divergence that no longer happens.
    stale_known: str | None = None
    #: The roundtrip check: parameter name -> [sha256 before, sha256 after].
    param_hashes: dict[str, list[str | None]] | None = None
    #: The user's frames of the exception that made this result an ``error``.
    traceback: str | None = None
    #: compare of several bundles: which bundle each side is.
    baseline_label: str | None = None
    candidate_label: str | None = None
    # Reserved for the accuracy, decision, distribution-shift and bisection capabilities.
    accuracy: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None
    shift: dict[str, Any] | None = None
    first_divergence: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))
        if self.underlying_status is not None:
            object.__setattr__(self, "underlying_status", Status(self.underlying_status))

    @property
    def passed(self) -> bool:
        return self.status.passed

    def replace(self, **changes: Any) -> Result:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """Every field, in declaration order, JSON-safe."""
        return {f.name: to_jsonable(getattr(self, f.name), str) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Result:
        """The Result :meth:`to_json` wrote; unknown keys are ignored (a newer writer's additions)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["env_diff"] = dict(values.get("env_diff") or {})
        return cls(**values)


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Result))


class Outcome(str, enum.Enum):
    """How running one variant ended."""

    OK = "ok"
    ERROR = "error"  # raised, timed out, crashed, or returned something that is not outputs
    SKIPPED = "skipped"  # not runnable here: no device, framework or optional package

    def __str__(self) -> str:
        return self.value


# -- the messages between the runner and its workers --------------------------------------------


@dataclass(frozen=True)
class Task:
    """Run one variant: what crosses to a worker process (inputs and params by name)."""

    id: str
    case: str
    impl: str
    device: str
    dtype: str
    mode: str
    repeat: int
    inputs: Mapping[str, np.ndarray]
    params: Mapping[str, np.ndarray]
    #: Record the layers inside a model variant (``run --intermediates``).
    intermediates: bool = False
    #: The baseline's inputs to each layer (by layer call name), to re-run each layer on them.
    shadow_inputs: Mapping[str, list[np.ndarray]] | None = None


@dataclass
class VariantLog:
    """What a variant printed and warned while it ran, kept with it instead of on the terminal."""

    stdout: str = ""
    stderr: str = ""
    warnings: list[str] = field(default_factory=list)
    truncated: bool = False

    #: Characters kept per stream; the rest is cut and ``truncated`` set.
    LIMIT = 16_384

    @classmethod
    def bounded(cls, stdout: str, stderr: str, warnings: list[str]) -> VariantLog:
        cut = len(stdout) > cls.LIMIT or len(stderr) > cls.LIMIT or len(warnings) > 100
        return cls(stdout=_tail(stdout, cls.LIMIT), stderr=_tail(stderr, cls.LIMIT), warnings=warnings[:100],
                   truncated=cut)

    def with_warnings(self, more: list[str]) -> VariantLog:
        """This log with ``more`` warnings after its own (what the runner itself has to say)."""
        return VariantLog(stdout=self.stdout, stderr=self.stderr, warnings=[*self.warnings, *more],
                          truncated=self.truncated)

    def to_json(self) -> dict[str, Any]:
        return {"stdout": self.stdout, "stderr": self.stderr, "warnings": list(self.warnings),
                "truncated": self.truncated}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> VariantLog:
        data = data or {}
        return cls(stdout=str(data.get("stdout") or ""), stderr=str(data.get("stderr") or ""),
                   warnings=[str(w) for w in data.get("warnings") or []], truncated=bool(data.get("truncated")))


def _tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else "[...]\n" + text[-limit:]


@dataclass
class Reply:
    """What running one variant gave: its outcome, outputs and everything recorded beside them."""

    id: str
    outcome: Outcome
    error: str | None = None
    traceback: str | None = None
    seconds: float | None = None
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    distinct_results: int | None = None
    repeat_outputs: dict[str, np.ndarray] | None = None
    run_digests: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    roundtrip: dict[str, Any] | None = None
    #: With --repeat-processes: {"processes", "runs", "digests" (per process, per run), "failures"}.
    repeat: dict[str, Any] | None = None
    log: VariantLog = field(default_factory=VariantLog)
    #: ``--intermediates``: the layers (a :class:`detharness.intermediates.Recorded`).
    layers: Any = None

    @classmethod
    def failure(cls, id: str, error: str, traceback: str | None = None) -> Reply:
        return cls(id=id, outcome=Outcome.ERROR, error=error, traceback=traceback)

    @classmethod
    def skip(cls, id: str, reason: str) -> Reply:
        return cls(id=id, outcome=Outcome.SKIPPED, error=reason)


@dataclass(frozen=True)
class Hello:
    """A worker's first message: the devices and fingerprint of its loaded backend, or why it failed."""

    devices: tuple[str, ...] = ()
    fingerprint: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    #: Anything else loading reported (timings, for benchmarks/suite.py).
    info: Mapping[str, Any] = field(default_factory=dict)
