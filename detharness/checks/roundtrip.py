"""``roundtrip``: a round-trip variant's outputs after a save and a load against its outputs before,
and the sha256 of every parameter before against after."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from detharness.checks.base import (
    Plan,
    apply_known,
    new_result,
    not_ok,
    reproduce_run,
    selected,
    tolerance_map,
    verdict_results,
)
from detharness.compare import Status, compare
from detharness.results import Outcome, Result
from detharness.roundtrip import is_roundtrip_mode

if TYPE_CHECKING:
    from detharness.cases import Variant
    from detharness.record import CaseRecord, RunRecord, VariantRecord


class RoundtripCheck:
    name: ClassVar[str] = "roundtrip"
    in_run: ClassVar[bool] = True

    def applies(self, v: Variant, plan: Plan) -> bool:
        return is_roundtrip_mode(v.mode)

    def needs(self, v: Variant) -> list[Variant]:
        return []

    def judge(self, record: RunRecord, only: Iterable[str] | None = None,
              baseline: RunRecord | None = None) -> list[Result]:
        results: list[Result] = []
        for v in selected(record, only):
            if not is_roundtrip_mode(v.mode):
                continue
            reproduce = reproduce_run(record, v.id, self.name)
            before_id, after_id = f"{v.id} before", f"{v.id} after"
            if v.status != Outcome.OK:
                results.append(not_ok(self.name, v, before_id, reproduce, candidate=after_id))
                continue
            if v.roundtrip is None:
                results.append(new_result(self.name, v.case, v.id, Status.ERROR, "no round-trip record",
                                          baseline=before_id, candidate=after_id, reproduce=reproduce))
                continue
            trip = v.roundtrip
            case = record.cases.get(v.case)
            fmt = trip.get("format", v.mode)
            exact = trip.get("exact", True)
            verdict = compare(dict(trip["before_outputs"]), dict(v.outputs),
                              tolerance="exact" if exact else tolerance_map(v))
            judged = "bit for bit" if exact else "with the case's tolerance (another runtime runs it)"
            for result in verdict_results(self.name, v.case, v.id, verdict, baseline=before_id, candidate=after_id,
                                          reproduce=reproduce):
                if not result.status.passed:
                    result = result.replace(message=f"the {fmt} round trip changed output {result.output!r} "
                                                    f"(judged {judged})\n{result.message}")
                results.append(apply_known(result, case, record.environment))
            results += _parameter_results(v, trip, case, record, before_id, after_id, reproduce)
        return results


def _parameter_results(v: VariantRecord, trip: Mapping[str, Any], case: CaseRecord | None, record: RunRecord,
                       before_id: str, after_id: str, reproduce: str) -> list[Result]:
    """One result per parameter whose bytes changed (or went missing); one ``params`` result otherwise."""
    params: Mapping[str, Mapping[str, Any]] = trip.get("params") or {}
    notes = list(trip.get("notes") or [])
    changed = trip.get("changed_params") or {}
    exact = trip.get("exact", True)
    results: list[Result] = []
    hashed = [name for name, p in params.items() if p.get("after") is not None]
    if not exact:
        # An exporter may rewrite parameters on purpose (ONNX: a batch norm folded into the conv
        # before it, under the conv's name): their bytes are reported, the outputs are the judge.
        rewritten = [name for name in hashed if params[name]["after"] != params[name]["before"]]
        if rewritten:
            notes.insert(0, f"rewritten by the export (bytes differ; the outputs judge them): {', '.join(rewritten)}")
    for name, p in params.items() if exact else ():
        if p.get("after") is None or p["after"] == p["before"]:
            continue
        hashes: dict[str, list[str | None]] = {name: [p["before"], p["after"]]}
        headline = (f"parameter {name!r} changed in the {trip.get('format')} round trip: "
                    f"sha256 {p['before'][:16]} before, {p['after'][:16]} after")
        if name in changed:
            label = f"param:{name}"
            verdict = compare({label: changed[name]["before"]}, {label: changed[name]["after"]}, tolerance="exact")
            first = verdict_results("roundtrip", v.case, v.id, verdict, baseline=before_id, candidate=after_id,
                                    reproduce=reproduce)[0]
            result = first.replace(message=f"{headline}\n{first.message}")
        else:
            result = new_result("roundtrip", v.case, v.id, Status.DIVERGED, headline, baseline=before_id,
                                candidate=after_id, reproduce=reproduce)
        result = result.replace(output=f"param:{name}", status=Status.DIVERGED, param_hashes=hashes,
                                reproduce=reproduce)
        results.append(apply_known(result, case, record.environment))
    if not results:
        same = [name for name in hashed if params[name]["after"] == params[name]["before"]]
        status = Status.IDENTICAL if len(same) == len(hashed) else Status.CLOSE
        if hashed:
            text = (f"{status.value.upper()} | Output: 'params' | {len(same)} of {len(hashed)} parameters hashed have "
                    f"the same sha256 before and after the {trip.get('format')} round trip")
        else:
            text = "IDENTICAL | Output: 'params' | no parameter hashed"
        results.append(new_result("roundtrip", v.case, v.id, status, "\n".join([text, *notes]), output="params",
                                  baseline=before_id, candidate=after_id, tolerance="exact", total=len(hashed),
                                  mismatched=len(hashed) - len(same),
                                  param_hashes={n: [p["before"], p.get("after")] for n, p in params.items()}))
    return results
