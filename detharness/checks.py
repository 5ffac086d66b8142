"""The kinds of comparison, each turning records into results (one per output compared).

- ``backend``: every implementation against its case's reference (an implementation or stored
  outputs);
- ``device``: a CUDA variant against the same variant on the CPU;
- ``repeat``: a variant run N times, whose outputs must be bitwise identical;
- ``environment``: a bundle against a baseline bundle, variant by variant.

A result is a plain dict with DESIGN.md's JSON fields, ready for the reports.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from detharness import environment as env_mod
from detharness.cases import parse_variant_id, variant_id
from detharness.compare import Status, Verdict, compare
from detharness.record import CaseRecord, RunRecord, VariantRecord

CHECKS = ("backend", "device", "repeat", "environment")
RUN_CHECKS = ("backend", "device", "repeat")
DEFAULT_FAIL_ON = ("diverged", "mismatch", "error")

RESULT_FIELDS = (
    "check", "case", "variant", "output", "baseline", "candidate", "status", "message", "tolerance", "total",
    "mismatched", "max_ulp", "mean_ulp", "p99_ulp", "ulp_histogram", "max_abs", "max_rel", "max_scaled",
    "first_mismatch_index", "worst_index", "worst_expected", "worst_actual", "min_passing", "env_diff", "reproduce",
)


def new_result(check: str, case: str, variant: str, status: str, message: str, *, output: str | None = None,
               baseline: str | None = None, candidate: str | None = None, reproduce: str | None = None,
               env_diff: Mapping[str, Any] | None = None) -> dict[str, Any]:
    result: dict[str, Any] = dict.fromkeys(RESULT_FIELDS)
    result.update(check=check, case=case, variant=variant, output=output, baseline=baseline, candidate=candidate,
                  status=status, message=message, env_diff=dict(env_diff or {}), reproduce=reproduce)
    return result


def _tolerance_map(v: VariantRecord) -> dict[str, str] | None:
    chosen = {name: tol for name, tol in v.tolerances.items() if tol}
    return chosen or None


def verdict_results(check: str, case: str, variant: str, verdict: Verdict, *, baseline: str, candidate: str,
                    reproduce: str | None, env_diff: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """One result per output of a (possibly multi-output) verdict."""
    per_output = verdict.outputs or {verdict.output or "y": verdict}
    results = []
    for name, v in per_output.items():
        result = new_result(check, case, variant, str(Status(v.status).value), v.message, output=name,
                            baseline=baseline, candidate=candidate, env_diff=env_diff)
        for key, value in v.to_json().items():
            if key in RESULT_FIELDS and key not in {"check", "case", "variant", "output", "baseline", "candidate"}:
                result[key] = value
        result["status"] = str(Status(v.status).value)
        result["reproduce"] = reproduce if result["status"] not in ("identical", "close") else None
        results.append(result)
    return results


def apply_known(result: dict[str, Any], case: CaseRecord | None, environment: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a failing result covered by a declared known divergence into ``known``; flag stale ones."""
    if case is None:
        return result
    known = case.known_for(result["variant"], result["check"], environment)
    if known is None:
        return result
    if result["status"] in ("diverged", "mismatch"):
        result["underlying_status"] = result["status"]
        result["status"] = "known"
        result["known_reason"] = known.reason
        result["message"] = f"known divergence ({known.reason}); underlying: {result['underlying_status']}\n{result['message']}"
    elif result["status"] in ("identical", "close"):
        result["stale_known"] = known.reason
        result["message"] = f"declared known divergence no longer happens (stale): {known.reason}"
    return result


def _not_ok(check: str, v: VariantRecord, baseline: str | None, reproduce: str | None) -> dict[str, Any]:
    status = "skipped" if v.status == "skipped" else "error"
    return new_result(check, v.case, v.id, status, v.error or status, baseline=baseline, candidate=v.id,
                      reproduce=reproduce if status == "error" else None)


def reproduce_run(record: RunRecord, variant: str, check: str) -> str:
    """The command line that runs this one variant's check again in this environment."""
    opts = record.options
    parts = ["detharness", "run"]
    for path in opts.get("cases") or []:
        parts += ["--cases", path]
    parts += ["-k", variant, "--check", check]
    if check == "repeat":
        parts += ["--repeat", str(max(2, int(opts.get("repeat") or 2)))]
    if opts.get("deterministic"):
        parts.append("--deterministic")
    if opts.get("inputs_from"):
        parts += ["--inputs-from", opts["inputs_from"]]
    return shlex.join(parts)


def choose_reference(case: CaseRecord, candidate: VariantRecord, record: RunRecord) -> VariantRecord | None:
    """The case's reference variant: its reference implementation's first dtype and mode, on the CPU."""
    if case.reference_variant is None or case.reference_variant == candidate.id:
        return None
    return record.variants.get(case.reference_variant)


def _selected(record: RunRecord, only: Iterable[str] | None) -> list[VariantRecord]:
    if only is None:
        return list(record.variants.values())
    return [record.variants[i] for i in only if i in record.variants]


def backend_check(record: RunRecord, only: Iterable[str] | None = None) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for v in _selected(record, only):
        case = record.cases.get(v.case)
        if case is None or case.reference is None:
            continue
        reproduce = reproduce_run(record, v.id, "backend")
        if case.reference_outputs is not None:
            ref_id, expected = f"{case.id}[stored outputs]", case.reference_outputs
        else:
            ref = choose_reference(case, v, record)
            if ref is None:
                continue
            if ref.status != "ok":
                status = "skipped" if ref.status == "skipped" else "error"
                results.append(new_result("backend", v.case, v.id, status,
                                          f"reference {ref.id} did not run: {ref.error}", baseline=ref.id, candidate=v.id))
                continue
            ref_id, expected = ref.id, ref.outputs
        if v.status != "ok":
            results.append(_not_ok("backend", v, ref_id, reproduce))
            continue
        verdict = compare(dict(expected), dict(v.outputs), tolerance=_tolerance_map(v))
        for result in verdict_results("backend", v.case, v.id, verdict, baseline=ref_id, candidate=v.id,
                                      reproduce=reproduce):
            results.append(apply_known(result, case, record.environment))
    return results


def device_check(record: RunRecord, only: Iterable[str] | None = None) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for v in _selected(record, only):
        if v.device == "cpu" or v.status == "skipped":
            continue
        cpu = record.variants.get(variant_id(v.case, v.impl, "cpu", v.dtype, v.mode))
        if cpu is None or cpu.status == "skipped":
            continue
        reproduce = reproduce_run(record, f"{v.case}[{v.impl}:", "device")
        if v.status != "ok" or cpu.status != "ok":
            bad = v if v.status != "ok" else cpu
            results.append(_not_ok("device", bad, cpu.id, reproduce))
            continue
        verdict = compare(dict(cpu.outputs), dict(v.outputs), tolerance=_tolerance_map(v))
        for result in verdict_results("device", v.case, v.id, verdict, baseline=cpu.id, candidate=v.id,
                                      reproduce=reproduce):
            results.append(apply_known(result, record.cases.get(v.case), record.environment))
    return results


def repeat_check(record: RunRecord, only: Iterable[str] | None = None) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for v in _selected(record, only):
        if v.status == "skipped" or (v.status == "ok" and v.distinct_results is None):
            continue
        reproduce = reproduce_run(record, v.id, "repeat")
        if v.status != "ok":
            results.append(_not_ok("repeat", v, v.id, reproduce))
            continue
        runs = int(record.options.get("repeat") or 1)
        if v.distinct_results == 1 or v.repeat_outputs is None:
            result = new_result("repeat", v.case, v.id, "identical",
                                f"{runs} runs gave bitwise identical outputs", baseline=v.id, candidate=v.id)
            result["distinct_results"] = 1
            results.append(result)
            continue
        verdict = compare(dict(v.outputs), dict(v.repeat_outputs), tolerance="exact")
        for result in verdict_results("repeat", v.case, v.id, verdict, baseline=f"{v.id} run 1",
                                      candidate=f"{v.id} run k", reproduce=reproduce):
            result["distinct_results"] = v.distinct_results
            if result["status"] == "identical":
                continue  # this output agreed; another one differed
            result["message"] = (f"{runs} runs gave {v.distinct_results} distinct results "
                                 f"(not bitwise reproducible)\n{result['message']}")
            results.append(apply_known(result, record.cases.get(v.case), record.environment))
    return results


def run_checks(record: RunRecord, checks: Sequence[str] | None = None) -> list[dict[str, Any]]:
    wanted = set(checks or RUN_CHECKS)
    results: list[dict[str, Any]] = []
    if "backend" in wanted:
        results += backend_check(record)
    if "device" in wanted:
        results += device_check(record)
    if "repeat" in wanted:
        results += repeat_check(record)
    return results


# -- environment: bundle against bundle ----------------------------------------------------------


def _device_free(vid: str) -> str:
    case, impl, _device, dtype, mode = parse_variant_id(vid)
    return variant_id(case, impl, "*", dtype, mode)


def pair_variants(baseline: RunRecord, candidate: RunRecord, match_device: str) -> list[tuple[str, VariantRecord | None, VariantRecord | None]]:
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
        options.sort(key=lambda b: (b.device != v.device, b.status != "ok"))
        match = options[0] if options else None
        if match is not None:
            used.add(match.id)
        pairs.append((v.id, match, v))
    pairs += [(b.id, b, None) for b in baseline.variants.values() if b.id not in used]
    return pairs


def reproduce_compare(baseline: RunRecord, variant: str) -> str:
    base = baseline.path or "BASELINE"
    return (f"detharness run -k {shlex.quote(variant)} --inputs-from {shlex.quote(base)} --out candidate-bundle && "
            f"detharness compare {shlex.quote(base)} candidate-bundle -k {shlex.quote(variant)}")


def environment_check(baseline: RunRecord, candidate: RunRecord, *, match_device: str = "same",
                      keyword: str | None = None, only: Iterable[str] | None = None) -> list[dict[str, Any]]:
    from detharness.select import compile_expression

    match = compile_expression(keyword) if keyword else None
    diff = env_mod.diff(baseline.environment, candidate.environment)
    base_name, cand_name = baseline.environment_id[:12], candidate.environment_id[:12]
    wanted = set(only) if only is not None else None
    results: list[dict[str, Any]] = []
    for vid, b, c in pair_variants(baseline, candidate, match_device):
        if wanted is not None and vid not in wanted:
            continue
        if match is not None and not match(vid, _keywords(b or c)):
            continue
        one = c or b
        assert one is not None
        case_b, case_c = baseline.cases.get(one.case), candidate.cases.get(one.case)
        this_diff = dict(diff)
        if case_b is not None and case_c is not None and case_b.fingerprint != case_c.fingerprint:
            this_diff["case.fingerprint"] = [case_b.fingerprint, case_c.fingerprint]
        reproduce = reproduce_compare(baseline, vid)
        common = dict(baseline=f"{base_name}:{b.id}" if b else None, candidate=f"{cand_name}:{c.id}" if c else None,
                      env_diff=this_diff)
        if b is None or c is None:
            side = "baseline" if b is not None else "candidate"
            results.append(new_result("environment", one.case, vid, "missing", f"only in the {side} bundle", **common))
            continue
        if b.status == "skipped" or c.status == "skipped":
            why = b.error if b.status == "skipped" else c.error
            results.append(new_result("environment", c.case, vid, "skipped", why or "skipped", **common))
            continue
        if b.status != "ok" or c.status != "ok":
            bad = b if b.status != "ok" else c
            which = "baseline" if bad is b else "candidate"
            results.append(new_result("environment", c.case, vid, "error", f"{which}: {bad.error}",
                                      reproduce=reproduce, **common))
            continue
        if case_b is not None and case_c is not None and case_b.inputs_digest != case_c.inputs_digest:
            results.append(new_result("environment", c.case, vid, "mismatch",
                                      "mismatch: inputs differ (rerun the candidate with --inputs-from BASELINE)",
                                      reproduce=reproduce, **common))
            continue
        verdict = compare(dict(b.outputs), dict(c.outputs), tolerance=_tolerance_map(c))
        for result in verdict_results("environment", c.case, vid, verdict, reproduce=reproduce,
                                      baseline=common["baseline"], candidate=common["candidate"], env_diff=this_diff):
            results.append(apply_known(result, case_c, candidate.environment))
    return results


def _keywords(v: VariantRecord | None) -> set[str]:
    if v is None:
        return set()
    return {v.backend, v.impl, v.device, v.dtype, v.mode}


def summarize(results: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -Status(kv[0]).severity))


def failed(results: Iterable[Mapping[str, Any]], fail_on: Iterable[str] = DEFAULT_FAIL_ON) -> bool:
    wanted = set(fail_on)
    return any(r["status"] in wanted for r in results)

