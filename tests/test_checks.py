"""Checks on hand-built records: which pairs are compared, and what each result says."""

from __future__ import annotations

import numpy as np
import pytest

from detharness.cases import KnownDivergence
from detharness.checks import CHECKS, environment_check
from detharness.record import CaseRecord, RunRecord, VariantRecord
from detharness.results import FIELDS, failed, summarize

backend_check = CHECKS["backend"].judge
device_check = CHECKS["device"].judge
repeat_check = CHECKS["repeat"].judge

X = np.linspace(-1, 1, 16, dtype=np.float64)


def _variant(impl: str, *, device: str = "cpu", dtype: str = "float32", status: str = "ok", y: np.ndarray | None = None,
             reference: bool = False, **extra: object) -> VariantRecord:
    vid = f"demo/case[{impl}:{device}:{dtype}:eager]"
    outputs = {"y": (X if y is None else y).astype(dtype)} if status == "ok" else {}
    return VariantRecord(id=vid, case="demo/case", impl=impl, backend="numpy", device=device, dtype=dtype, mode="eager",
                         status=status, reference=reference, outputs=outputs, error=None if status == "ok" else "boom",
                         **extra)  # type: ignore[arg-type]


def _record(*variants: VariantRecord, known: list[KnownDivergence] | None = None, env: dict | None = None,
            inputs_digest: str = "abc") -> RunRecord:
    case = CaseRecord(id="demo/case", fingerprint="f1", reference="ref", reference_variant="demo/case[ref:cpu:float64:eager]",
                      known=known or [], inputs_digest=inputs_digest)
    return RunRecord(environment=env or {"numpy.version": "2.4.6"}, environment_id="e" * 64, cases={case.id: case},
                     variants={v.id: v for v in variants}, options={"cases": ["my_cases"], "repeat": 1})


def _ref() -> VariantRecord:
    return _variant("ref", dtype="float64", reference=True)


def test_backend_check_holds_each_variant_against_the_reference() -> None:
    results = backend_check(_record(_ref(), _variant("same"), _variant("off", y=X + 1e-3)))
    by_impl = {r.variant: r for r in results}
    assert set(by_impl) == {"demo/case[same:cpu:float32:eager]", "demo/case[off:cpu:float32:eager]"}
    same, off = by_impl["demo/case[same:cpu:float32:eager]"], by_impl["demo/case[off:cpu:float32:eager]"]
    # Equal values but another dtype than the float64 reference: close, never identical (bytes differ).
    assert same.status == "close" and same.reproduce is None
    assert off.status == "diverged"
    assert off.baseline == "demo/case[ref:cpu:float64:eager]"
    assert off.reproduce == "detharness run --cases my_cases -k 'demo/case[off:cpu:float32:eager]' --check backend"
    assert set(FIELDS) == set(off.to_json())


def test_backend_check_reports_errors_and_a_failed_reference() -> None:
    results = backend_check(_record(_ref(), _variant("broken", status="error")))
    assert [(r.status, r.message) for r in results] == [("error", "boom")]
    results = backend_check(_record(_variant("ref", dtype="float64", reference=True, status="error"), _variant("x")))
    assert results[0].status == "error"
    assert results[0].message == "reference demo/case[ref:cpu:float64:eager] failed: boom"


def test_known_divergence_turns_diverged_into_known_and_flags_stale() -> None:
    known = [KnownDivergence("serving rounds differently", variants="*[off:*")]
    results = backend_check(_record(_ref(), _variant("off", y=X + 1e-3), known=known))
    assert results[0].status == "known"
    assert results[0].underlying_status == "diverged"
    assert results[0].known_reason == "serving rounds differently"
    stale = backend_check(_record(_ref(), _variant("off"), known=known))
    assert stale[0].status == "close"
    assert stale[0].stale_known == "serving rounds differently"


def test_known_divergence_limited_to_an_environment_no_longer_applies_elsewhere() -> None:
    known = [KnownDivergence("old numpy", variants="*", when={"numpy.version": "2.2.*"})]
    results = backend_check(_record(_ref(), _variant("off", y=X + 1e-3), known=known, env={"numpy.version": "2.4.6"}))
    assert results[0].status == "diverged"


def test_device_check_pairs_cuda_with_cpu() -> None:
    results = device_check(_record(_variant("t"), _variant("t", device="cuda", y=X + 1e-2)))
    assert len(results) == 1
    assert results[0].status == "diverged"
    assert results[0].baseline == "demo/case[t:cpu:float32:eager]"


def test_repeat_check_counts_distinct_results() -> None:
    steady = _variant("s", distinct_results=1)
    flaky = _variant("f", distinct_results=3, repeat_outputs={"y": (X + 1e-3).astype("float32")})
    record = _record(steady, flaky)
    record.options["repeat"] = 5
    results = {r.variant: r for r in repeat_check(record)}
    assert results["demo/case[s:cpu:float32:eager]"].status == "identical"
    bad = results["demo/case[f:cpu:float32:eager]"]
    assert bad.status == "diverged" and bad.distinct_results == 3
    assert bad.message.startswith("5 runs gave 3 distinct results (not bitwise reproducible)")


def test_environment_check_pairs_variants_and_shows_the_environment_diff() -> None:
    base = _record(_ref(), _variant("t"), _variant("gone"))
    cand = _record(_ref(), _variant("t", y=X + 1e-2), _variant("new"), env={"numpy.version": "2.2.6"})
    results = {r.variant: r for r in environment_check(base, cand)}
    assert results["demo/case[t:cpu:float32:eager]"].status == "diverged"
    assert results["demo/case[t:cpu:float32:eager]"].env_diff == {"numpy.version": ["2.4.6", "2.2.6"]}
    assert results["demo/case[gone:cpu:float32:eager]"].status == "missing"
    assert results["demo/case[new:cpu:float32:eager]"].message == "only in the candidate bundle"
    assert results["demo/case[ref:cpu:float64:eager]"].status == "identical"


def test_environment_check_refuses_to_compare_different_inputs() -> None:
    results = environment_check(_record(_variant("t")), _record(_variant("t"), inputs_digest="other"))
    assert results[0].status == "mismatch"
    assert results[0].message.startswith("mismatch: inputs differ")


def test_match_device_any_holds_cuda_against_cpu() -> None:
    gpu = _record(_variant("t", device="cuda", y=X + 1e-2))
    cpu = _record(_variant("t"))
    assert {r.status for r in environment_check(cpu, gpu)} == {"missing"}
    results = environment_check(cpu, gpu, match_device="any")
    assert [(r.variant, r.status) for r in results] == [("demo/case[t:cuda:float32:eager]", "diverged")]


def test_environment_check_keyword_matches_tags_as_run_does() -> None:
    """``-k`` is over ids and tags (DESIGN.md): ``compare -k TAG`` keeps what ``run -k TAG`` ran."""
    base, cand = _record(_variant("t")), _record(_variant("t"))
    for record in (base, cand):
        record.cases["demo/case"].tags = ["skew"]
    assert [r.variant for r in environment_check(base, cand, keyword="skew and numpy")] == \
        ["demo/case[t:cpu:float32:eager]"]
    assert environment_check(base, cand, keyword="not skew") == []


@pytest.mark.parametrize(("fail_on", "expected"), [(("diverged",), True), (("error",), False)])
def test_failed_and_summary(fail_on: tuple[str, ...], expected: bool) -> None:
    results = backend_check(_record(_ref(), _variant("off", y=X + 1e-3), _variant("same")))
    assert summarize(results) == {"diverged": 1, "close": 1}
    assert failed(results, fail_on) is expected


def _declared() -> list:
    from detharness import case
    from detharness.cases import Registry, collecting_into

    with collecting_into(Registry()) as registry:
        c = case("demo/decl", inputs=lambda rng: {"x": np.ones(2)})
        c.impl("ref", backend="numpy", reference=True, dtypes=("float64",))(lambda x: {"y": x})
        c.impl("t", backend="torch", dtypes=("float32",))(lambda x: {"y": x})
    return list(next(iter(registry)).variants())


def test_which_checks_judge_a_variant_and_what_they_need_come_from_the_checks() -> None:
    from detharness.checks import Plan, checks_for, needed

    ref, cpu, cuda = _declared()
    assert checks_for(ref, Plan()) == []  # the reference is what the others are held against
    assert checks_for(cpu, Plan()) == ["backend"]
    assert checks_for(cuda, Plan()) == ["backend", "device"]
    assert checks_for(cuda, Plan(repeating=True)) == ["backend", "device", "repeat"]
    # The device check needs the CPU twin, the backend check the reference: each once.
    assert [v.id for v in needed([cuda], Plan(), ["device"])] == [cuda.id, cpu.id]
    assert [v.id for v in needed([cuda], Plan())] == [cuda.id, ref.id, cpu.id]


def test_an_error_is_reported_once_per_check_asked_for() -> None:
    from detharness.checks import run_checks

    record = _record(_ref(), _variant("broken", status="error"))
    assert [(r.check, r.status) for r in run_checks(record)] == [("backend", "error")]
    record.options["repeat"] = 3
    assert [(r.check, r.status) for r in run_checks(record)] == [("backend", "error"), ("repeat", "error")]


def test_a_result_round_trips_through_json_and_ignores_unknown_keys() -> None:
    from detharness.results import Result

    (result,) = backend_check(_record(_ref(), _variant("off", y=X + 1e-3)))
    data = result.to_json()
    assert Result.from_json({**data, "added_by_a_newer_version": 1}) == result
    assert data["status"] == "diverged" and data["first_divergence"] is None


# -- a failure is never masked: an error on either side is an error of the comparison -----------


@pytest.mark.parametrize("order", ["baseline errored", "candidate errored"])
def test_environment_check_an_error_on_one_side_is_not_hidden_by_a_skip_on_the_other(order: str) -> None:
    errored = _variant("t", dtype="bfloat16", status="error", traceback="Traceback ...\nIR version 14")
    errored.error = "Unsupported model IR version: 14"
    skipped = _variant("t", dtype="bfloat16", status="skipped")
    skipped.error = "bfloat16 needs a newer onnxruntime"
    base, cand = (_record(errored), _record(skipped)) if order == "baseline errored" else \
        (_record(skipped), _record(errored))
    (result,) = environment_check(base, cand)
    side, other = ("baseline", "candidate") if order == "baseline errored" else ("candidate", "baseline")
    assert result.status == "error"
    assert result.message == (f"{side}: Unsupported model IR version: 14 "
                              f"({other} skipped: bfloat16 needs a newer onnxruntime)")
    assert result.traceback == "Traceback ...\nIR version 14" and result.reproduce
    assert summarize([result]) == {"error": 1} and failed([result], ("error",))


def test_environment_check_an_error_on_both_sides_or_beside_a_missing_variant_is_an_error() -> None:
    (both,) = environment_check(_record(_variant("t", status="error")), _record(_variant("t", status="error")))
    assert (both.status, both.message) == ("error", "baseline: boom; candidate: boom")
    (alone,) = environment_check(_record(), _record(_variant("t", status="error")))
    assert (alone.status, alone.message) == ("error", "candidate: boom (only in the candidate bundle)")


def test_device_check_a_cuda_error_is_not_hidden_by_a_cpu_twin_that_skipped_or_did_not_run() -> None:
    cuda = _variant("t", device="cuda", status="error")
    for record in (_record(_variant("t", status="skipped"), cuda), _record(cuda)):
        (result,) = device_check(record)
        assert (result.status, result.message, result.baseline) == ("error", "boom", "demo/case[t:cpu:float32:eager]")


def test_device_check_a_cpu_twin_error_is_not_hidden_by_a_cuda_variant_that_skipped() -> None:
    (result,) = device_check(_record(_variant("t", status="error"), _variant("t", device="cuda", status="skipped")))
    assert (result.status, result.message) == ("error", "reference demo/case[t:cpu:float32:eager] failed: boom")
    # Nothing failed and nothing ran: still no result.
    assert device_check(_record(_variant("t", status="skipped"), _variant("t", device="cuda", status="skipped"))) == []


def test_backend_check_a_failed_reference_is_not_hidden_by_a_skipped_candidate() -> None:
    ref = _variant("ref", dtype="float64", reference=True, status="error")
    (result,) = backend_check(_record(ref, _variant("x", status="skipped")))
    assert (result.status, result.message) == ("error", "reference demo/case[ref:cpu:float64:eager] failed: boom")
    # A candidate's own error still comes first; a skipped reference hides nothing.
    (own,) = backend_check(_record(_variant("ref", dtype="float64", reference=True, status="skipped"),
                                   _variant("x", status="error")))
    assert (own.status, own.message) == ("error", "boom")


def test_rng_check_a_cpu_stream_error_is_not_hidden_by_a_device_that_skipped() -> None:
    record = _record(_variant("t", status="error"), _variant("t", device="cuda", status="skipped"))
    record.cases["demo/case"].kind = "rng"
    results = [(r.variant, r.status, r.message) for r in CHECKS["rng"].judge(record)]
    assert ("demo/case[t:cuda:float32:eager]", "error", "reference demo/case[t:cpu:float32:eager] failed: boom") \
        in results
    assert ("demo/case[t:cpu:float32:eager]", "error", "boom") in results


# -- a declared known divergence that does not apply says why ---------------------------------


def test_a_declaration_whose_when_does_not_hold_is_named_with_the_condition_that_failed() -> None:
    known = [KnownDivergence("aten default kernels", variants="*[off:*", when={"torch.cpu_capability": "DEFAULT"})]
    (result,) = backend_check(_record(_ref(), _variant("off", y=X + 1e-3), known=known,
                                      env={"torch.cpu_capability": "AVX512"}))
    assert result.status == "diverged" and result.known_reason is None
    first, rest = result.message.split("\n", 1)
    assert first == ("declared known divergence 'aten default kernels' does not apply here: "
                     "when torch.cpu_capability=DEFAULT, this environment has AVX512")
    assert rest.startswith("DIVERGED")
    # A key the environment does not record at all.
    (unrecorded,) = backend_check(_record(_ref(), _variant("off", y=X + 1e-3), known=known))
    assert unrecorded.message.splitlines()[0].endswith(
        "when torch.cpu_capability=DEFAULT, this environment does not record torch.cpu_capability")


@pytest.mark.parametrize(("declared", "why"), [
    (KnownDivergence("r", variants="*[other:*"), "variants *[other:* does not match demo/case[off:cpu:float32:eager]"),
    (KnownDivergence("r", checks=("device",)), "checks device do not include the backend check"),
    (KnownDivergence("r", against="*[*:cuda:*"),
     "against *[*:cuda:*, this result is held against demo/case[ref:cpu:float64:eager]"),
])
def test_each_condition_of_a_declaration_that_does_not_hold_is_said(declared: KnownDivergence, why: str) -> None:
    (result,) = backend_check(_record(_ref(), _variant("off", y=X + 1e-3), known=[declared]))
    assert result.status == "diverged"
    assert result.message.splitlines()[0] == f"declared known divergence 'r' does not apply here: {why}"


def test_the_declaration_that_came_closest_is_named_and_the_others_counted() -> None:
    known = [KnownDivergence("for jax", variants="*[jax:*"),
             KnownDivergence("old numpy", variants="*[off:*", when={"numpy.version": "2.2.*"}),
             KnownDivergence("for the device check", variants="*[off:*", checks=("device",))]
    (result,) = backend_check(_record(_ref(), _variant("off", y=X + 1e-3), known=known))
    assert result.message.splitlines()[0] == ("declared known divergence 'old numpy' does not apply here: when "
                                              "numpy.version=2.2.*, this environment has 2.4.6 "
                                              "(2 other declarations do not apply either)")
    # Passing results and cases without declarations are left as they were.
    (passing,) = backend_check(_record(_ref(), _variant("same"), known=known))
    assert passing.status == "close" and "declared" not in passing.message
    (plain,) = backend_check(_record(_ref(), _variant("off", y=X + 1e-3)))
    assert plain.message.startswith("DIVERGED")


def test_known_divergence_unmet_agrees_with_applies() -> None:
    k = KnownDivergence("r", variants="*[t:*", checks=("environment",), when={"a.b": "1*"}, against="*cpu*")
    for vid, check, env, base in [("x[t:cpu]", "environment", {"a.b": "12"}, "b[cpu]"),
                                  ("x[u:cpu]", "environment", {"a.b": "12"}, "b[cpu]"),
                                  ("x[t:cpu]", "backend", {"a.b": "12"}, "b[cpu]"),
                                  ("x[t:cpu]", "environment", {"a.b": "2"}, "b[cpu]"),
                                  ("x[t:cpu]", "environment", {"a.b": "12"}, None)]:
        assert (k.unmet(vid, check, env, base) is None) == k.applies(vid, check, env, base)


def test_compares_reproduce_line_runs_the_candidates_own_cases() -> None:
    base = _record(_ref(), _variant("t"))
    base.path = "bundles/base line"
    cand = _record(_ref(), _variant("t", y=X + 1e-2))
    (result,) = [r for r in environment_check(base, cand) if r.status == "diverged"]
    assert result.reproduce == ("detharness run --cases my_cases -k 'demo/case[t:cpu:float32:eager]' "
                                "--inputs-from 'bundles/base line' --out candidate-bundle && detharness compare "
                                "'bundles/base line' candidate-bundle -k 'demo/case[t:cpu:float32:eager]'")
