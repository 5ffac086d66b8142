"""``repeat``: a variant run N times (``--repeat``), or in N fresh processes (``--repeat-processes``),
whose outputs must be bitwise identical."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

from detharness.checks.base import (
    Plan,
    apply_known,
    case_kind,
    new_result,
    not_ok,
    reproduce_run,
    selected,
    verdict_results,
)
from detharness.compare import Status, compare
from detharness.results import Outcome, Result

if TYPE_CHECKING:
    from detharness.cases import Variant
    from detharness.record import RunRecord, VariantRecord


def asked(record: RunRecord) -> bool:
    options = record.options
    return int(options.get("repeat") or 1) > 1 or int(options.get("repeat_processes") or 1) > 1


def runs_text(record: RunRecord, v: VariantRecord) -> str:
    """``5 runs``, or ``3 fresh processes`` / ``3 fresh processes x 2 runs`` under --repeat-processes."""
    if v.repeat and int(v.repeat.get("processes") or 1) > 1:
        runs = int(v.repeat.get("runs") or 1)
        return f"{v.repeat['processes']} fresh processes" + (f" x {runs} runs" if runs > 1 else "")
    return f"{max(int(record.options.get('repeat') or 1), 2 if case_kind(record, v) == 'rng' else 1)} runs"


def _differing_process(v: VariantRecord) -> str:
    """Which process first gave other bits than the first one's first run ("run k" without processes)."""
    if not v.repeat:
        return "run k"
    digests = v.repeat.get("digests") or []
    first = digests[0][0] if digests and digests[0] else None
    for p, runs in enumerate(digests):
        for r, digest in enumerate(runs):
            if digest != first:
                return f"process {p + 1}" + (f" run {r + 1}" if len(runs) > 1 else "")
    return "run k"


class RepeatCheck:
    name: ClassVar[str] = "repeat"
    in_run: ClassVar[bool] = True

    def applies(self, v: Variant, plan: Plan) -> bool:
        return plan.repeating

    def needs(self, v: Variant) -> list[Variant]:
        return []

    def judge(self, record: RunRecord, only: Iterable[str] | None = None,
              baseline: RunRecord | None = None) -> list[Result]:
        if not asked(record):
            return []  # an rng case draws twice on its own; the rng check reports that
        results: list[Result] = []
        for v in selected(record, only):
            if v.status == Outcome.SKIPPED or (v.status == Outcome.OK and v.distinct_results is None):
                continue
            reproduce = reproduce_run(record, v.id, self.name)
            failures = (v.repeat or {}).get("failures") or []
            if v.status == Outcome.OK and failures:
                results.append(new_result(self.name, v.case, v.id, Status.ERROR, "; ".join(failures), baseline=v.id,
                                          candidate=v.id, reproduce=reproduce))
                continue
            if v.status != Outcome.OK:
                results.append(not_ok(self.name, v, v.id, reproduce))
                continue
            runs = runs_text(record, v)
            if v.distinct_results == 1 or v.repeat_outputs is None:
                results.append(new_result(self.name, v.case, v.id, Status.IDENTICAL,
                                          f"{runs} gave bitwise identical outputs", baseline=v.id, candidate=v.id,
                                          distinct_results=1))
                continue
            first = "process 1" if v.repeat and int(v.repeat.get("processes") or 1) > 1 else "run 1"
            verdict = compare(dict(v.outputs), dict(v.repeat_outputs), tolerance="exact")
            for result in verdict_results(self.name, v.case, v.id, verdict, baseline=f"{v.id} {first}",
                                          candidate=f"{v.id} {_differing_process(v)}", reproduce=reproduce):
                if result.status == Status.IDENTICAL:
                    continue  # this output agreed; another one differed
                changed = result.replace(distinct_results=v.distinct_results,
                                         message=f"{runs} gave {v.distinct_results} distinct results "
                                                 f"(not bitwise reproducible)\n{result.message}")
                results.append(apply_known(changed, record.cases.get(v.case), record.environment))
        return results
