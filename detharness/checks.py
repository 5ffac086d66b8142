"""The kinds of comparison, each turning records into results (one per output compared).

- ``backend``: every implementation against its case's reference (an implementation or stored
  outputs);
- ``device``: a CUDA variant against the same variant on the CPU;
- ``repeat``: a variant run N times (``--repeat``), or in N fresh processes
  (``--repeat-processes``), whose outputs must be bitwise identical;
- ``rng``: an rng case's streams: reseeding must reproduce each stream; a device's stream is held
  against the CPU's; across bundles every stream must be the baseline's, bit for bit;
- ``roundtrip``: a round-trip variant's outputs after a save and a load against its outputs
  before, and the sha256 of every parameter before against after;
- ``environment``: a bundle against a baseline bundle, variant by variant (an rng case's streams
  are labelled ``rng`` there).

A result is a plain dict with DESIGN.md's JSON fields, ready for the reports.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from detharness import environment as env_mod
from detharness.cases import parse_variant_id, variant_id, variant_keywords
from detharness.compare import Status, Verdict, compare
from detharness.compare.verdict import share
from detharness.record import CaseRecord, RunRecord, VariantRecord
from detharness.roundtrip import is_roundtrip_mode
from detharness.select import compile_expression

CHECKS = ("backend", "device", "repeat", "rng", "roundtrip", "environment")
RUN_CHECKS = ("backend", "device", "repeat", "rng", "roundtrip")
DEFAULT_FAIL_ON = ("diverged", "mismatch", "error")

RESULT_FIELDS = (
    "check", "case", "variant", "output", "baseline", "candidate", "status", "message", "tolerance", "total",
    "mismatched", "max_ulp", "mean_ulp", "p99_ulp", "ulp_histogram", "max_abs", "max_rel", "max_scaled",
    "first_mismatch_index", "worst_index", "worst_expected", "worst_actual", "min_passing", "env_diff", "reproduce",
)


def own_checks(kind: str, mode: str) -> tuple[str, ...]:
    """The in-environment checks, ``repeat`` aside, that judge a variant of a case of this kind in this mode.

    An rng case's variants are judged by the ``rng`` check, a round-trip variant by the
    ``roundtrip`` check (against its own before outputs), every other variant by the ``backend``
    and ``device`` checks. The runner selects variants by it (``--check``) and the checks skip by it.
    """
    if kind == "rng":
        return ("rng",)
    if is_roundtrip_mode(mode):
        return ("roundtrip",)
    return ("backend", "device")


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
            if key in RESULT_FIELDS and key not in {"check", "case", "variant", "output", "baseline", "candidate",
                                                    "status"}:
                result[key] = value
        result["reproduce"] = reproduce if result["status"] not in ("identical", "close") else None
        results.append(result)
    return results


def apply_known(result: dict[str, Any], case: CaseRecord | None, environment: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a failing result covered by a declared known divergence into ``known``; flag stale ones."""
    if case is None:
        return result
    known = case.known_for(result["variant"], result["check"], environment, result.get("baseline"))
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
        processes = int(opts.get("repeat_processes") or 1)
        if processes > 1:
            parts += ["--repeat-processes", str(processes)]
        if processes == 1 or int(opts.get("repeat") or 1) > 1:
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
        if case is None or case.reference is None or "backend" not in own_checks(case.kind, v.mode):
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
        if v.device == "cpu" or v.status == "skipped" or "device" not in own_checks(_kind(record, v), v.mode):
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


def _kind(record: RunRecord, v: VariantRecord) -> str:
    case = record.cases.get(v.case)
    return case.kind if case is not None else "compute"


def _runs_text(record: RunRecord, v: VariantRecord) -> str:
    """``5 runs``, or ``3 fresh processes`` / ``3 fresh processes x 2 runs`` under --repeat-processes."""
    if v.repeat and int(v.repeat.get("processes") or 1) > 1:
        runs = int(v.repeat.get("runs") or 1)
        return f"{v.repeat['processes']} fresh processes" + (f" x {runs} runs" if runs > 1 else "")
    return f"{max(int(record.options.get('repeat') or 1), 2 if _kind(record, v) == 'rng' else 1)} runs"


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


def repeat_check(record: RunRecord, only: Iterable[str] | None = None) -> list[dict[str, Any]]:
    asked = int(record.options.get("repeat") or 1) > 1 or int(record.options.get("repeat_processes") or 1) > 1
    results: list[dict[str, Any]] = []
    for v in _selected(record, only):
        if v.status == "skipped" or (v.status == "ok" and v.distinct_results is None):
            continue
        if _kind(record, v) == "rng" and not asked:
            continue  # an rng case draws twice on its own; the rng check reports that
        reproduce = reproduce_run(record, v.id, "repeat")
        failures = (v.repeat or {}).get("failures") or []
        if v.status == "ok" and failures:
            result = new_result("repeat", v.case, v.id, "error", "; ".join(failures), baseline=v.id,
                                candidate=v.id, reproduce=reproduce)
            results.append(result)
            continue
        if v.status != "ok":
            results.append(_not_ok("repeat", v, v.id, reproduce))
            continue
        runs = _runs_text(record, v)
        if v.distinct_results == 1 or v.repeat_outputs is None:
            result = new_result("repeat", v.case, v.id, "identical",
                                f"{runs} gave bitwise identical outputs", baseline=v.id, candidate=v.id)
            result["distinct_results"] = 1
            results.append(result)
            continue
        first = "process 1" if v.repeat and int(v.repeat.get("processes") or 1) > 1 else "run 1"
        verdict = compare(dict(v.outputs), dict(v.repeat_outputs), tolerance="exact")
        for result in verdict_results("repeat", v.case, v.id, verdict, baseline=f"{v.id} {first}",
                                      candidate=f"{v.id} {_differing_process(v)}", reproduce=reproduce):
            result["distinct_results"] = v.distinct_results
            if result["status"] == "identical":
                continue  # this output agreed; another one differed
            result["message"] = (f"{runs} gave {v.distinct_results} distinct results "
                                 f"(not bitwise reproducible)\n{result['message']}")
            results.append(apply_known(result, record.cases.get(v.case), record.environment))
    return results


# -- rng: seeded streams -------------------------------------------------------------------------


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
    return f"stream parts from {against}'s at {where}; {share(verdict.differing or verdict.mismatched, verdict.total)} of values differ"


def stream_results(check: str, case: CaseRecord | None, v: VariantRecord, expected: Mapping[str, np.ndarray],
                   actual: Mapping[str, np.ndarray], *, baseline: str, candidate: str, against: str,
                   reproduce: str | None, environment: Mapping[str, Any],
                   env_diff: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Streams held against streams, exactly: one result per output, headed by where they part."""
    verdict = compare(dict(expected), dict(actual), tolerance="exact")
    per_output = verdict.outputs or {verdict.output or "y": verdict}
    results = []
    for result in verdict_results(check, v.case, v.id, verdict, baseline=baseline, candidate=candidate,
                                  reproduce=reproduce, env_diff=env_diff):
        one = per_output.get(result["output"])
        if result["status"] == "diverged" and one is not None:
            result["message"] = f"{stream_headline(one, against)}\n{result['message']}"
        results.append(apply_known(result, case, environment))
    return results


def rng_check(record: RunRecord, only: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Each rng variant: reseeded, its streams must come again; a device's streams against the CPU's."""
    results: list[dict[str, Any]] = []
    for v in _selected(record, only):
        case = record.cases.get(v.case)
        if case is None or case.kind != "rng":
            continue
        reproduce = reproduce_run(record, v.id, "rng")
        if v.status != "ok":
            results.append(_not_ok("rng", v, v.id, reproduce))
            continue
        if v.distinct_results is not None and v.distinct_results > 1 and v.repeat_outputs is not None:
            results += stream_results("rng", case, v, v.outputs, v.repeat_outputs, baseline=f"{v.id} draw 1",
                                      candidate=f"{v.id} draw 2", against="the first draw", reproduce=reproduce,
                                      environment=record.environment)
        else:
            for name, stream in v.outputs.items():
                arr = np.asarray(stream)
                result = new_result("rng", v.case, v.id, "identical",
                                    f"IDENTICAL | Output: {name!r} | reseeding gave the same stream again: "
                                    f"{arr.size} {arr.dtype} values {_preview(arr)}",
                                    output=name, baseline=f"{v.id} draw 1", candidate=f"{v.id} draw 2")
                result.update(tolerance="exact", total=int(arr.size), mismatched=0)
                results.append(result)
        if v.device == "cpu":
            continue
        cpu = record.variants.get(variant_id(v.case, v.impl, "cpu", v.dtype, v.mode))
        if cpu is None or cpu.status == "skipped":
            continue
        if cpu.status != "ok":
            results.append(_not_ok("rng", cpu, cpu.id, reproduce_run(record, cpu.id, "rng")))
            continue
        results += stream_results("rng", case, v, cpu.outputs, v.outputs, baseline=cpu.id, candidate=v.id,
                                  against="the CPU stream", reproduce=reproduce_run(record, f"{v.case}[{v.impl}:", "rng"),
                                  environment=record.environment)
    return results


# -- roundtrip: before and after a save and a load ------------------------------------------------


def roundtrip_check(record: RunRecord, only: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Each round-trip variant: after outputs against before outputs, and every parameter's hash."""
    results: list[dict[str, Any]] = []
    for v in _selected(record, only):
        if not is_roundtrip_mode(v.mode):
            continue
        reproduce = reproduce_run(record, v.id, "roundtrip")
        before_id, after_id = f"{v.id} before", f"{v.id} after"
        if v.status != "ok" or v.roundtrip is None:
            if v.status == "ok":
                results.append(new_result("roundtrip", v.case, v.id, "error", "no round-trip record",
                                          baseline=before_id, candidate=after_id, reproduce=reproduce))
            else:
                results.append(_not_ok("roundtrip", v, before_id, reproduce))
            continue
        trip = v.roundtrip
        case = record.cases.get(v.case)
        fmt = trip.get("format", v.mode)
        tolerance: Any = "exact" if trip.get("exact", True) else _tolerance_map(v)
        verdict = compare(dict(trip["before_outputs"]), dict(v.outputs), tolerance=tolerance)
        judged = "bit for bit" if trip.get("exact", True) else "with the case's tolerance (another runtime runs it)"
        for result in verdict_results("roundtrip", v.case, v.id, verdict, baseline=before_id, candidate=after_id,
                                      reproduce=reproduce):
            if result["status"] not in ("identical", "close"):
                result["message"] = (f"the {fmt} round trip changed output {result['output']!r} (judged {judged})\n"
                                     f"{result['message']}")
            results.append(apply_known(result, case, record.environment))
        results += _parameter_results(v, trip, case, record, before_id, after_id, reproduce)
    return results


def _parameter_results(v: VariantRecord, trip: Mapping[str, Any], case: CaseRecord | None, record: RunRecord,
                       before_id: str, after_id: str, reproduce: str) -> list[dict[str, Any]]:
    """One result per parameter whose bytes changed (or went missing); one ``params`` result otherwise."""
    params: Mapping[str, Mapping[str, Any]] = trip.get("params") or {}
    notes = list(trip.get("notes") or [])
    changed = trip.get("changed_params") or {}
    results = []
    hashed = [name for name, p in params.items() if p.get("after") is not None]
    if not trip.get("exact", True):
        # An exporter may rewrite parameters on purpose (ONNX: a batch norm folded into the conv
        # before it, under the conv's name): their bytes are reported, the outputs are the judge.
        rewritten = [name for name in hashed if params[name]["after"] != params[name]["before"]]
        if rewritten:
            notes.insert(0, f"rewritten by the export (bytes differ; the outputs judge them): {', '.join(rewritten)}")
    for name, p in params.items():
        if not trip.get("exact", True):
            break
        if p.get("after") is None or p["after"] == p["before"]:
            continue
        hashes = {name: [p["before"], p["after"]]}
        headline = (f"parameter {name!r} changed in the {trip.get('format')} round trip: "
                    f"sha256 {p['before'][:16]} before, {p['after'][:16]} after")
        if name in changed:
            label = f"param:{name}"
            verdict = compare({label: changed[name]["before"]}, {label: changed[name]["after"]}, tolerance="exact")
            result = verdict_results("roundtrip", v.case, v.id, verdict, baseline=before_id, candidate=after_id,
                                     reproduce=reproduce)[0]
            result["message"] = f"{headline}\n{result['message']}"
        else:
            result = new_result("roundtrip", v.case, v.id, "diverged", headline, baseline=before_id,
                                candidate=after_id, reproduce=reproduce)
        result.update(output=f"param:{name}", status="diverged", param_hashes=hashes)
        results.append(apply_known(result, case, record.environment))
    if not results:
        same = [name for name in hashed if params[name]["after"] == params[name]["before"]]
        status = "identical" if len(same) == len(hashed) else "close"
        if hashed:
            text = (f"{status.upper()} | Output: 'params' | {len(same)} of {len(hashed)} parameters hashed have the "
                    f"same sha256 before and after the {trip.get('format')} round trip")
        else:
            text = "IDENTICAL | Output: 'params' | no parameter hashed"
        result = new_result("roundtrip", v.case, v.id, status, "\n".join([text, *notes]), output="params",
                            baseline=before_id, candidate=after_id)
        result.update(tolerance="exact", total=len(hashed), mismatched=len(hashed) - len(same),
                      param_hashes={n: [p["before"], p.get("after")] for n, p in params.items()})
        results.append(result)
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
    if "rng" in wanted:
        results += rng_check(record)
    if "roundtrip" in wanted:
        results += roundtrip_check(record)
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
    match = compile_expression(keyword) if keyword else None
    diff = env_mod.diff(baseline.environment, candidate.environment)
    base_name, cand_name = baseline.environment_id[:12], candidate.environment_id[:12]
    wanted = set(only) if only is not None else None
    results: list[dict[str, Any]] = []
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
        this_diff = dict(diff)
        if case_b is not None and case_c is not None and case_b.fingerprint != case_c.fingerprint:
            this_diff["case.fingerprint"] = [case_b.fingerprint, case_c.fingerprint]
        reproduce = reproduce_compare(baseline, vid)
        common = dict(baseline=f"{base_name}:{b.id}" if b else None, candidate=f"{cand_name}:{c.id}" if c else None,
                      env_diff=this_diff)
        if b is None or c is None:
            side = "baseline" if b is not None else "candidate"
            results.append(new_result(check, one.case, vid, "missing", f"only in the {side} bundle", **common))
            continue
        if b.status == "skipped" or c.status == "skipped":
            why = b.error if b.status == "skipped" else c.error
            results.append(new_result(check, c.case, vid, "skipped", why or "skipped", **common))
            continue
        if b.status != "ok" or c.status != "ok":
            bad = b if b.status != "ok" else c
            which = "baseline" if bad is b else "candidate"
            results.append(new_result(check, c.case, vid, "error", f"{which}: {bad.error}",
                                      reproduce=reproduce, **common))
            continue
        if case_b is not None and case_c is not None and case_b.inputs_digest != case_c.inputs_digest:
            results.append(new_result(check, c.case, vid, "mismatch",
                                      "mismatch: inputs differ (rerun the candidate with --inputs-from BASELINE)",
                                      reproduce=reproduce, **common))
            continue
        if check == "rng":
            results += stream_results("rng", case_c, c, b.outputs, c.outputs, baseline=common["baseline"],
                                      candidate=common["candidate"], against="the baseline", reproduce=reproduce,
                                      environment=candidate.environment, env_diff=this_diff)
            continue
        verdict = compare(dict(b.outputs), dict(c.outputs), tolerance=_tolerance_map(c))
        for result in verdict_results("environment", c.case, vid, verdict, reproduce=reproduce,
                                      baseline=common["baseline"], candidate=common["candidate"], env_diff=this_diff):
            results.append(apply_known(result, case_c, candidate.environment))
    return results


def record_keywords(case: CaseRecord | None, v: VariantRecord) -> set[str]:
    """What ``-k`` matches besides a recorded variant's id: the same names as a declared variant's."""
    return variant_keywords(case.tags if case is not None else (), v.backend, v.impl, v.device, v.dtype, v.mode)


def summarize(results: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -Status(kv[0]).severity))


def failed(results: Iterable[Mapping[str, Any]], fail_on: Iterable[str] = DEFAULT_FAIL_ON) -> bool:
    wanted = set(fail_on)
    return any(r["status"] in wanted for r in results)

