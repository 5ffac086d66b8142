"""The kinds of comparison, each one module behind the :class:`~detharness.checks.base.Check` protocol.

- ``backend``: every implementation against its case's reference (an implementation or stored
  outputs);
- ``device``: a CUDA variant against the same variant on the CPU;
- ``repeat``: a variant run N times (``--repeat``), or in N fresh processes
  (``--repeat-processes``), whose outputs must be bitwise identical;
- ``rng``: an rng case's streams: reseeding must reproduce each stream; a device's stream is held
  against the CPU's; across bundles every stream must be the baseline's, bit for bit;
- ``roundtrip``: a round-trip variant's outputs after a save and a load against its outputs
  before, and the sha256 of every parameter before against after;
- ``environment``: a bundle against a baseline bundle, variant by variant.

A new check is one new module and one line in :data:`CHECKS`: the runner (which variants to run),
the CLI (``--check`` choices) and the pytest plugin (which items to make) derive from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from detharness.checks.backend import BackendCheck
from detharness.checks.base import Check, Plan, new_result, not_ok, reproduce_run, selected
from detharness.checks.device import DeviceCheck
from detharness.checks.environment import EnvironmentCheck, environment_check, pair_variants, record_keywords
from detharness.checks.repeat import RepeatCheck
from detharness.checks.rng import RngCheck
from detharness.checks.roundtrip import RoundtripCheck
from detharness.results import Outcome, Result

if TYPE_CHECKING:
    from detharness.cases import Variant
    from detharness.record import RunRecord

#: Every check, in the order their results are produced.
CHECKS: dict[str, Check] = {c.name: c for c in (BackendCheck(), DeviceCheck(), RepeatCheck(), RngCheck(),
                                                 RoundtripCheck(), EnvironmentCheck())}
#: The checks ``detharness run`` can run (``--check`` choices).
RUN_CHECKS: tuple[str, ...] = tuple(name for name, c in CHECKS.items() if c.in_run)


def checks_for(v: Variant, plan: Plan, names: Iterable[str] | None = None) -> list[str]:
    """The checks (of ``names``, default all) that judge variant ``v``.

    A variant that no check holds against another and that no other variant needs (a case's only
    implementation) is the backend check's: that check reports it, with its error or "nothing to
    compare", so that ``--check backend`` selects it and the pytest plugin gives it an item.
    """
    wanted = CHECKS if names is None else {n: CHECKS[n] for n in names}
    applying = {name for name, c in CHECKS.items() if c.applies(v, plan)}
    if not applying and "backend" in wanted and not _needed_by_another(v, plan):
        return ["backend"]
    return [name for name in wanted if name in applying]


def _needed_by_another(v: Variant, plan: Plan) -> bool:
    """Whether a check that judges another variant of ``v``'s case needs ``v`` (as its reference)."""
    return any(n.id == v.id for u in v.case.variants() if u.id != v.id
               for c in CHECKS.values() if c.applies(u, plan) for n in c.needs(u))


def needed(variants: Sequence[Variant], plan: Plan, names: Iterable[str] | None = None) -> list[Variant]:
    """``variants`` plus what the checks that judge them need run (references, CPU twins), once each."""
    chosen = list(names) if names is not None else list(CHECKS)
    have = {v.id for v in variants}
    out = list(variants)
    for v in variants:
        for name in checks_for(v, plan, chosen):
            for extra in CHECKS[name].needs(v):
                if extra.id not in have:
                    have.add(extra.id)
                    out.append(extra)
    return out


def run_checks(record: RunRecord, names: Sequence[str] | None = None, only: Iterable[str] | None = None,
               baseline: RunRecord | None = None) -> list[Result]:
    """The results of the checks ``names`` (default: every check ``run`` runs) on ``record``."""
    results: list[Result] = []
    chosen = set(names or RUN_CHECKS)
    ids = list(only) if only is not None else None
    for name, check in CHECKS.items():
        if name in chosen:
            results += check.judge(record, ids, baseline)
    # Under the first chosen check in CHECKS order: the backend check's, where it ran.
    filed_under = next((n for n in CHECKS if n in chosen), "backend")
    return results + unjudged_errors(record, results, ids, filed_under)


def unjudged_errors(record: RunRecord, results: Sequence[Result], only: Iterable[str] | None,
                    check: str) -> list[Result]:
    """An ``error`` result for each variant that raised, crashed or timed out and that no result names.

    A check reports a variant's error where it holds the variant against another; a variant that
    nothing is held against (a case's only implementation, a reference whose candidates were not
    selected) would otherwise fail with no result at all, and the run would say "nothing compared"
    and exit 0.
    """
    named = {name for r in results for name in (r.variant, r.baseline, r.candidate) if name}
    # Reproduced without --check: a reference whose candidates were not selected is no check's own.
    return [not_ok(check, v, None, reproduce_run(record, v.id, None)) for v in selected(record, only)
            if v.status == Outcome.ERROR and v.id not in named]


__all__ = [
    "CHECKS",
    "RUN_CHECKS",
    "Check",
    "Plan",
    "checks_for",
    "environment_check",
    "needed",
    "new_result",
    "pair_variants",
    "record_keywords",
    "reproduce_run",
    "run_checks",
    "unjudged_errors",
]
