"""``device``: a CUDA variant against the same variant on the CPU."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

from detharness.cases import Variant, variant_id
from detharness.checks.backend import judges
from detharness.checks.base import (
    Plan,
    case_kind,
    judged,
    not_ok,
    oracle_for,
    reference_failed,
    reproduce_run,
    selected,
    tolerance_map,
)
from detharness.compare import compare
from detharness.results import Outcome, Result

if TYPE_CHECKING:
    from detharness.record import RunRecord, VariantRecord


def cpu_twin(v: Variant) -> Variant:
    """The same implementation, dtype and mode on the CPU: what a device's outputs are held against."""
    return Variant(v.case, v.impl, "cpu", v.dtype, v.mode)


def cpu_twin_id(v: VariantRecord) -> str:
    """The id of a recorded variant's CPU twin (see :func:`cpu_twin`)."""
    return variant_id(v.case, v.impl, "cpu", v.dtype, v.mode)


class DeviceCheck:
    name: ClassVar[str] = "device"
    in_run: ClassVar[bool] = True

    def applies(self, v: Variant, plan: Plan) -> bool:
        return v.device != "cpu" and judges(v.case.kind, v.mode)

    def needs(self, v: Variant) -> list[Variant]:
        return [cpu_twin(v)] if v.device != "cpu" else []

    def judge(self, record: RunRecord, only: Iterable[str] | None = None,
              baseline: RunRecord | None = None) -> list[Result]:
        results: list[Result] = []
        for v in selected(record, only):
            if v.device == "cpu" or not judges(case_kind(record, v), v.mode):
                continue
            cpu_id = cpu_twin_id(v)
            cpu = record.variants.get(cpu_id)
            reproduce = reproduce_run(record, f"{v.case}[{v.impl}:", self.name)
            # An error on either side is an error of the comparison: a CPU twin that skipped (or
            # was not run) never hides the device variant's error, nor the other way round.
            if v.status == Outcome.ERROR:
                results.append(not_ok(self.name, v, cpu_id, reproduce))
                continue
            if cpu is not None and cpu.status == Outcome.ERROR:
                results.append(reference_failed(self.name, v, cpu, reproduce))
                continue
            if v.status != Outcome.OK or cpu is None or cpu.status != Outcome.OK:
                continue  # nothing was compared, and nothing failed
            verdict = compare(dict(cpu.outputs), dict(v.outputs), tolerance=tolerance_map(v))
            case = record.cases.get(v.case)
            # Who is wrong: both devices against the case's float64 reference (the CPU as baseline).
            oracle = oracle_for(record, case, v.dtype, baseline=cpu.outputs, baseline_name=cpu.id)
            results += judged(self.name, v.case, case, v.id, verdict, cpu.outputs, v.outputs, baseline=cpu.id,
                              candidate=v.id, reproduce=reproduce, environment=record.environment, oracle=oracle)
        return results
