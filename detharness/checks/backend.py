"""``backend``: every implementation against its case's reference (an implementation or stored outputs)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

from detharness.checks.base import (
    Plan,
    apply_known,
    not_ok,
    reference_failed,
    reproduce_run,
    selected,
    tolerance_map,
    verdict_results,
)
from detharness.compare import compare
from detharness.results import Outcome, Result
from detharness.roundtrip import is_roundtrip_mode

if TYPE_CHECKING:
    from detharness.cases import Variant
    from detharness.record import RunRecord


def judges(kind: str, mode: str) -> bool:
    """Computations are judged against a reference; rng streams and round trips are not."""
    return kind == "compute" and not is_roundtrip_mode(mode)


class BackendCheck:
    name: ClassVar[str] = "backend"
    in_run: ClassVar[bool] = True

    def applies(self, v: Variant, plan: Plan) -> bool:
        if not judges(v.case.kind, v.mode):
            return False
        ref = v.case.reference_variant
        return (ref is not None and ref.id != v.id) or (ref is None and v.case.reference_outputs is not None)

    def needs(self, v: Variant) -> list[Variant]:
        ref = v.case.reference_variant
        return [ref] if ref is not None and ref.id != v.id else []

    def judge(self, record: RunRecord, only: Iterable[str] | None = None,
              baseline: RunRecord | None = None) -> list[Result]:
        results: list[Result] = []
        for v in selected(record, only):
            case = record.cases.get(v.case)
            if case is None or case.reference is None or not judges(case.kind, v.mode):
                continue
            if case.reference_variant == v.id:
                continue  # the reference is what the others are held against
            reproduce = reproduce_run(record, v.id, self.name)
            if case.reference_outputs is not None:
                ref_id, expected = f"{case.id}[stored outputs]", case.reference_outputs
            else:
                ref = record.variants.get(case.reference_variant or "")
                if ref is None:
                    continue
                # An error on either side is an error of the comparison: the candidate's own error
                # first, then the reference's (which a skipped candidate must not hide).
                if v.status != Outcome.ERROR and (ref.status == Outcome.ERROR or
                                                  (v.status == Outcome.OK and ref.status != Outcome.OK)):
                    results.append(reference_failed(self.name, v, ref, reproduce))
                    continue
                ref_id, expected = ref.id, ref.outputs
            if v.status != Outcome.OK:
                results.append(not_ok(self.name, v, ref_id, reproduce))
                continue
            verdict = compare(dict(expected), dict(v.outputs), tolerance=tolerance_map(v))
            results += [apply_known(result, case, record.environment)
                        for result in verdict_results(self.name, v.case, v.id, verdict, baseline=ref_id,
                                                      candidate=v.id, reproduce=reproduce)]
        return results
