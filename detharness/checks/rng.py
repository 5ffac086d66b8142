"""``rng``: an rng case's streams. Reseeding must reproduce each stream; a device's stream is held
against the CPU's; across bundles every stream must be the baseline's, bit for bit."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from detharness.checks.base import (
    Plan,
    apply_known,
    new_result,
    not_ok,
    reference_failed,
    reproduce_run,
    selected,
    verdict_results,
)
from detharness.checks.device import cpu_twin, cpu_twin_id
from detharness.compare import Status, Verdict, compare
from detharness.compare.verdict import share
from detharness.results import Outcome, Result

if TYPE_CHECKING:
    from detharness.cases import Variant
    from detharness.record import CaseRecord, RunRecord, VariantRecord


def _preview(array: np.ndarray, count: int = 4) -> str:
    flat = np.asarray(array).ravel()
    shown = ", ".join(f"{x:.6g}" if isinstance(x, float) else str(x) for x in flat[:count].tolist())
    return f"[{shown}{', ...' if flat.size > count else ''}]"


def stream_headline(verdict: Verdict, against: str) -> str:
    """Where two streams part and how much of them differs: ``parts from X's at index 17 ...``."""
    if verdict.first_mismatch_index is None or verdict.shape is None:
        return f"stream differs from {against}'s"
    flat = int(np.ravel_multi_index(tuple(verdict.first_mismatch_index), verdict.shape)) if verdict.shape else 0
    where = f"index {flat}" + (f" (element {list(verdict.first_mismatch_index)})" if len(verdict.shape) > 1 else "")
    differing = share(verdict.differing or verdict.mismatched, verdict.total)
    return f"stream parts from {against}'s at {where}; {differing} of values differ"


def stream_results(check: str, case: CaseRecord | None, v: VariantRecord, expected: Mapping[str, np.ndarray],
                   actual: Mapping[str, np.ndarray], *, baseline: str, candidate: str, against: str,
                   reproduce: str | None, environment: Mapping[str, Any],
                   env_diff: Mapping[str, Any] | None = None) -> list[Result]:
    """Streams held against streams, exactly: one result per output, headed by where they part."""
    verdict = compare(dict(expected), dict(actual), tolerance="exact")
    per_output = verdict.outputs or {verdict.output or "y": verdict}
    results = []
    for result in verdict_results(check, v.case, v.id, verdict, baseline=baseline, candidate=candidate,
                                  reproduce=reproduce, env_diff=env_diff):
        one = per_output.get(result.output or "")
        if result.status == Status.DIVERGED and one is not None:
            result = result.replace(message=f"{stream_headline(one, against)}\n{result.message}")
        results.append(apply_known(result, case, environment))
    return results


class RngCheck:
    name: ClassVar[str] = "rng"
    in_run: ClassVar[bool] = True

    def applies(self, v: Variant, plan: Plan) -> bool:
        return v.case.kind == "rng"

    def needs(self, v: Variant) -> list[Variant]:
        return [cpu_twin(v)] if v.device != "cpu" else []

    def judge(self, record: RunRecord, only: Iterable[str] | None = None,
              baseline: RunRecord | None = None) -> list[Result]:
        results: list[Result] = []
        for v in selected(record, only):
            case = record.cases.get(v.case)
            if case is None or case.kind != "rng":
                continue
            reproduce = reproduce_run(record, v.id, self.name)
            cpu = record.variants.get(cpu_twin_id(v)) if v.device != "cpu" else None
            if v.status != Outcome.OK:
                results.append(not_ok(self.name, v, v.id, reproduce))
                # The stream held against the CPU's: the CPU side's error is this comparison's
                # error, even where this device could not run.
                if v.status == Outcome.SKIPPED and cpu is not None and cpu.status == Outcome.ERROR:
                    results.append(reference_failed(self.name, v, cpu, reproduce_run(record, cpu.id, self.name)))
                continue
            if v.distinct_results is not None and v.distinct_results > 1 and v.repeat_outputs is not None:
                results += stream_results(self.name, case, v, v.outputs, v.repeat_outputs,
                                          baseline=f"{v.id} draw 1", candidate=f"{v.id} draw 2",
                                          against="the first draw", reproduce=reproduce,
                                          environment=record.environment)
            else:
                for name, stream in v.outputs.items():
                    arr = np.asarray(stream)
                    results.append(new_result(
                        self.name, v.case, v.id, Status.IDENTICAL,
                        f"IDENTICAL | Output: {name!r} | reseeding gave the same stream again: "
                        f"{arr.size} {arr.dtype} values {_preview(arr)}",
                        output=name, baseline=f"{v.id} draw 1", candidate=f"{v.id} draw 2", tolerance="exact",
                        total=int(arr.size), mismatched=0))
            if cpu is None or cpu.status == Outcome.SKIPPED:
                continue
            if cpu.status != Outcome.OK:
                results.append(reference_failed(self.name, v, cpu, reproduce_run(record, cpu.id, self.name)))
                continue
            results += stream_results(self.name, case, v, cpu.outputs, v.outputs, baseline=cpu.id, candidate=v.id,
                                      against="the CPU stream",
                                      reproduce=reproduce_run(record, f"{v.case}[{v.impl}:", self.name),
                                      environment=record.environment)
        return results
