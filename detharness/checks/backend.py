"""``backend``: every implementation against its case's reference (an implementation or stored outputs)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from detharness.cases import variant_id
from detharness.checks.base import (
    Plan,
    float64_reference,
    judged,
    not_ok,
    reference_failed,
    reproduce_run,
    selected,
    tolerance_map,
)
from detharness.checks.measures import Oracle
from detharness.compare import compare
from detharness.dtypes import FLOAT_DTYPES
from detharness.results import Outcome, Result
from detharness.roundtrip import is_roundtrip_mode

if TYPE_CHECKING:
    from detharness.cases import Variant
    from detharness.record import CaseRecord, RunRecord, VariantRecord


def judges(kind: str, mode: str) -> bool:
    """Computations are judged against a reference; rng streams and round trips are not."""
    return kind == "compute" and not is_roundtrip_mode(mode)


def _oracle(record: RunRecord, case: CaseRecord, v: VariantRecord) -> Oracle | None:
    """The float64 reference is the oracle; the baseline of the accuracy is the reference
    implementation at the candidate's dtype (the same formula at that precision: the best it gives),
    where the case declares it (``dtypes=("float64", "float32")``) and it ran."""
    ref = float64_reference(record, case)
    if ref is None or v.dtype not in FLOAT_DTYPES:
        return None
    same = record.variants.get(variant_id(v.case, ref.impl, ref.device, v.dtype, ref.mode))
    if same is not None and (same.id == ref.id or same.status != Outcome.OK):
        same = None
    if same is not None and same.id == v.id:
        return None  # the reference implementation at this dtype is the baseline itself
    return Oracle(ref.id, ref.outputs, same.outputs if same is not None else None,
                  same.id if same is not None else f"{ref.impl} at {v.dtype}")


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
        # Each reference output read once for all its candidates (a case's variants come one after
        # another), and let go when the next case starts: memory stays one case's worth.
        references: dict[int, Any] = {}
        current = None
        for v in selected(record, only):
            if v.case != current:
                references.clear()
                current = v.case
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
            results += judged(self.name, v.case, case, v.id, verdict, expected, v.outputs, baseline=ref_id,
                              candidate=v.id, reproduce=reproduce, environment=record.environment,
                              oracle=_oracle(record, case, v), references=references)
        return results
