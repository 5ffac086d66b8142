"""``environment``: a bundle against a baseline bundle, variant by variant (an rng case's streams
are labelled ``rng`` there and held bit for bit)."""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from detharness import environment as env_mod
from detharness.cases import parse_variant_id, shell_path, variant_id, variant_keywords
from detharness.checks.base import Plan, case_options, judged, new_result, oracle_for, tolerance_map
from detharness.checks.rng import stream_results
from detharness.compare import Status, compare
from detharness.results import Outcome, Result
from detharness.select import compile_expression

if TYPE_CHECKING:
    from detharness.cases import Variant
    from detharness.record import CaseRecord, RunRecord, VariantRecord


def _device_free(vid: str) -> str:
    case, impl, _device, dtype, mode = parse_variant_id(vid)
    return variant_id(case, impl, "*", dtype, mode)


def pair_variants(baseline: RunRecord, candidate: RunRecord, match_device: str
                  ) -> list[tuple[str, VariantRecord | None, VariantRecord | None]]:
    """Pair variants by id, or by everything but the device with ``match_device="any"``.

    With ``any``, a GPU runner's CUDA variant is held against the CPU runner's CPU variant; where a
    bundle has both devices, same-device pairs win.
    """
    if match_device == "same":
        ids = list(dict.fromkeys([*baseline.variants, *candidate.variants]))
        return [(i, baseline.variants.get(i), candidate.variants.get(i)) for i in ids]
    base_by_key: dict[str, list[VariantRecord]] = {}
    for v in baseline.variants.values():
        base_by_key.setdefault(_device_free(v.id), []).append(v)
    pairs: list[tuple[str, VariantRecord | None, VariantRecord | None]] = []
    used: set[str] = set()
    for v in candidate.variants.values():
        options = [b for b in base_by_key.get(_device_free(v.id), []) if b.id not in used]
        options.sort(key=lambda b: (b.device != v.device, b.status != Outcome.OK))
        match = options[0] if options else None
        if match is not None:
            used.add(match.id)
        pairs.append((v.id, match, v))
    pairs += [(b.id, b, None) for b in baseline.variants.values() if b.id not in used]
    return pairs


def reproduce_compare(baseline: RunRecord, candidate: RunRecord, variant: str) -> str:
    """Run the variant here on the baseline's inputs, with the candidate's case paths, and compare."""
    base = shell_path(baseline.path) if baseline.path else "BASELINE"
    cases = " ".join(case_options(candidate) or case_options(baseline))
    return (f"detharness run {cases + ' ' if cases else ''}-k {shlex.quote(variant)} --inputs-from {base} "
            f"--out candidate-bundle && detharness compare {base} candidate-bundle -k {shlex.quote(variant)}")


def record_keywords(case: CaseRecord | None, v: VariantRecord) -> set[str]:
    """What ``-k`` matches besides a recorded variant's id: the same names as a declared variant's."""
    return variant_keywords(case.tags if case is not None else (), v.backend, v.impl, v.device, v.dtype, v.mode)


def environment_check(baseline: RunRecord, candidate: RunRecord, *, match_device: str = "same",
                      keyword: str | None = None, only: Iterable[str] | None = None) -> list[Result]:
    match = compile_expression(keyword) if keyword else None
    diff = env_mod.diff(baseline.environment, candidate.environment)
    base_name, cand_name = baseline.environment_id[:12], candidate.environment_id[:12]
    wanted = set(only) if only is not None else None
    results: list[Result] = []
    for vid, b, c in pair_variants(baseline, candidate, match_device):
        if wanted is not None and vid not in wanted:
            continue
        one = c or b
        assert one is not None
        case_b, case_c = baseline.cases.get(one.case), candidate.cases.get(one.case)
        either = case_c if case_c is not None else case_b
        if match is not None and not match(vid, record_keywords(either, b or one)):
            continue
        # An rng case's outputs are streams: labelled rng, held exactly, said where they part.
        check = "rng" if either is not None and either.kind == "rng" else "environment"
        this_diff: dict[str, Any] = dict(diff)
        if case_b is not None and case_c is not None and case_b.fingerprint != case_c.fingerprint:
            this_diff["case.fingerprint"] = [case_b.fingerprint, case_c.fingerprint]
        reproduce = reproduce_compare(baseline, candidate, vid)
        base_side = f"{base_name}:{b.id}" if b else None
        cand_side = f"{cand_name}:{c.id}" if c else None
        # An error on either side is an error of the comparison, whatever the other side did
        # (skipped, missing or errored too): a skip or a missing twin never hides it.
        failed = [(side, v) for side, v in (("baseline", b), ("candidate", c))
                  if v is not None and v.status == Outcome.ERROR]
        if failed:
            message = "; ".join(f"{side}: {v.error or 'error'}" for side, v in failed)
            if b is None or c is None:
                message += f" (only in the {'baseline' if b is not None else 'candidate'} bundle)"
            elif len(failed) == 1:
                other = c if failed[0][1] is b else b
                if other.status == Outcome.SKIPPED:
                    message += f" ({'candidate' if other is c else 'baseline'} skipped: {other.error or 'skipped'})"
            results.append(new_result(check, one.case, vid, Status.ERROR, message, baseline=base_side,
                                      candidate=cand_side, env_diff=this_diff, reproduce=reproduce,
                                      traceback=failed[0][1].traceback))
            continue
        if b is None or c is None:
            side = "baseline" if b is not None else "candidate"
            results.append(new_result(check, one.case, vid, Status.MISSING, f"only in the {side} bundle",
                                      baseline=base_side, candidate=cand_side, env_diff=this_diff))
            continue
        if b.status == Outcome.SKIPPED or c.status == Outcome.SKIPPED:
            why = b.error if b.status == Outcome.SKIPPED else c.error
            results.append(new_result(check, c.case, vid, Status.SKIPPED, why or "skipped", baseline=base_side,
                                      candidate=cand_side, env_diff=this_diff))
            continue
        if case_b is not None and case_c is not None and case_b.inputs_digest != case_c.inputs_digest:
            results.append(new_result(check, c.case, vid, Status.MISMATCH,
                                      "mismatch: inputs differ (rerun the candidate with --inputs-from BASELINE)",
                                      baseline=base_side, candidate=cand_side, env_diff=this_diff,
                                      reproduce=reproduce))
            continue
        if check == "rng":
            results += stream_results("rng", case_c, c, b.outputs, c.outputs, baseline=base_side or "",
                                      candidate=cand_side or "", against="the baseline", reproduce=reproduce,
                                      environment=candidate.environment, env_diff=this_diff)
            continue
        verdict = compare(dict(b.outputs), dict(c.outputs), tolerance=tolerance_map(c))
        # Who is wrong: both bundles' outputs against the baseline bundle's float64 reference.
        oracle = oracle_for(baseline, case_b, c.dtype, baseline=b.outputs, baseline_name=base_side or b.id)
        results += judged("environment", c.case, case_c if case_c is not None else case_b, vid, verdict, b.outputs,
                          c.outputs, baseline=base_side, candidate=cand_side, reproduce=reproduce,
                          environment=candidate.environment, env_diff=this_diff, oracle=oracle)
    return results


class EnvironmentCheck:
    name: ClassVar[str] = "environment"
    in_run: ClassVar[bool] = False  # it needs a second bundle: `detharness compare`

    def applies(self, v: Variant, plan: Plan) -> bool:
        return plan.baseline is not None and v.id in plan.baseline.variants

    def needs(self, v: Variant) -> list[Variant]:
        return []

    def judge(self, record: RunRecord, only: Iterable[str] | None = None,
              baseline: RunRecord | None = None) -> list[Result]:
        if baseline is None:
            return []
        return environment_check(baseline, record, only=only)
