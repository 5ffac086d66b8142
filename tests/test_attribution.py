"""N-way compare and attribution: which fingerprint keys separate the environments that diverge."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from detharness import attribution
from detharness.attribution import Environment, attribute, bundle_labels, compare_bundles, separating_keys
from detharness.record import RunRecord, VariantRecord
from detharness.report import build, render
from detharness.results import Result, Status

BASE = {"machine.arch": "x86_64", "cpu.count": 2, "torch.cpu_capability": "AVX512", "env.ATEN_CPU_CAPABILITY": None,
        "numpy.version": "2.4.6", "jax.version": "0.10.2", "env.XLA_FLAGS": None, "env.OMP_NUM_THREADS": None}


def fp(**changes: Any) -> dict[str, Any]:
    keys = {k.replace("__", "."): v for k, v in changes.items()}
    return {**BASE, **keys}


ENVS = {
    "baseline": fp(),
    "aten-default": fp(torch__cpu_capability="DEFAULT", env__ATEN_CPU_CAPABILITY="default"),
    "aten-avx2": fp(torch__cpu_capability="AVX2", env__ATEN_CPU_CAPABILITY="avx2"),
    "aten-avx512": fp(env__ATEN_CPU_CAPABILITY="avx512"),
    "omp-1": fp(env__OMP_NUM_THREADS="1"),
    "numpy-2.2": fp(numpy__version="2.2.6"),
}


def test_one_key_separates_and_the_backends_own_key_ranks_first() -> None:
    differing = [ENVS["aten-default"], ENVS["aten-avx2"]]
    agreeing = [ENVS["baseline"], ENVS["aten-avx512"], ENVS["omp-1"], ENVS["numpy-2.2"]]
    assert separating_keys(differing, agreeing, prefer=("torch",)) == [
        ("torch.cpu_capability",), ("env.ATEN_CPU_CAPABILITY",)]
    # Without a backend to prefer, variables come before other keys.
    assert separating_keys(differing, agreeing) == [("env.ATEN_CPU_CAPABILITY",), ("torch.cpu_capability",)]


def test_the_architecture_is_named_before_the_keys_that_come_with_it() -> None:
    """An emulated aarch64 profile also differs in Python's patch release, the BLAS build and the
    backend's own keys; the line a reader needs says the architecture."""
    arm = fp(machine__arch="aarch64", python__version="3.11.2", blas__architecture="neoversen1",
             torch__cpu_capability="DEFAULT", machine__emulated="aarch64 qemu-7.2.22 cpu=neoverse-n1")
    x86 = fp(machine__arch="x86_64", python__version="3.11.7", blas__architecture="Haswell")
    found = separating_keys([arm], [x86], prefer=("torch",))
    assert found[0] == ("machine.arch",)
    assert ("torch.cpu_capability",) in found[1:] and ("python.version",) in found[1:]


def test_volatile_keys_never_explain_anything() -> None:
    assert separating_keys([fp(cpu__count=4)], [fp()]) == []


def test_the_smallest_set_when_no_single_key_separates() -> None:
    # Differs only where numpy is 2.2 AND there is one thread: neither key alone separates.
    envs = {
        "a": fp(), "b": fp(numpy__version="2.2.6"), "c": fp(env__OMP_NUM_THREADS="1"),
        "d": fp(numpy__version="2.2.6", env__OMP_NUM_THREADS="1"),
    }
    assert separating_keys([envs["d"]], [envs["a"], envs["b"], envs["c"]]) == [
        ("env.OMP_NUM_THREADS", "numpy.version")]


def test_two_causes_read_as_a_disjunction() -> None:
    """An older jax and an XLA flag each move jax's output: "K1=a or K2=b", not a tuple of both."""
    envs = environments("baseline", "omp-1")
    envs += [Environment("jax-0.9", "j", fp(jax__version="0.9.2")),
             Environment("xla", "x", fp(env__XLA_FLAGS="--xla_cpu_max_isa=SSE4_2"))]
    results = [result("jax-0.9", GELU, "close", max_ulp=7), result("xla", GELU, "close", max_ulp=9),
               result("omp-1", GELU, "identical")]
    (entry,) = attribute(results, envs, backends={GELU: "jax"})
    assert entry["keys"] == ["env.XLA_FLAGS", "jax.version"]
    assert entry["any_of"] == [["env.XLA_FLAGS", ["--xla_cpu_max_isa=SSE4_2"]], ["jax.version", ["0.9.2"]]]
    assert entry["line"] == ("every environment with env.XLA_FLAGS=--xla_cpu_max_isa=SSE4_2 or jax.version=0.9.2 "
                             "[jax-0.9, xla] differs from baseline on models/gelu[jax:cpu:float32:jit] y (close, 9 ulp); "
                             "the 2 others agree")


def test_matrix_cells_show_what_was_compared_before_what_was_skipped() -> None:
    envs = environments("baseline", "omp-1")
    results = [result("omp-1", SOFTMAX, "close", max_ulp=1),
               result("omp-1", SOFTMAX.replace(":cpu:", ":cuda:"), "skipped", output=None),
               result("omp-1", GELU, "skipped", output=None)]
    matrix = attribution.build_matrix(envs, results)
    assert matrix["cases"] == {"models/gelu": {"omp-1": "skipped"}, "models/softmax": {"omp-1": "close"}}


def test_nothing_separates_environments_alike_in_every_key() -> None:
    assert separating_keys([fp(), fp(numpy__version="2.2.6")], [fp()]) == []


def result(label: str, variant: str, status: str, output: str | None = "y", max_ulp: int | None = None) -> Result:
    return Result(check="environment", case=variant.split("[")[0], variant=variant, output=output,
                  status=Status(status), message="", max_ulp=max_ulp if status != "identical" else 0,
                  candidate_label=label, baseline_label="baseline")


SOFTMAX = "models/softmax[torch:cpu:float32:eager]"
LAYER_NORM = "models/layer_norm[torch:cpu:float32:eager]"
GELU = "models/gelu[jax:cpu:float32:jit]"


def environments(*labels: str) -> list[Environment]:
    return [Environment(label, f"id-{label}", ENVS[label]) for label in labels]


def test_attribution_names_the_key_and_groups_outputs_that_share_it() -> None:
    envs = environments("baseline", "aten-default", "aten-avx2", "aten-avx512", "omp-1", "numpy-2.2")
    results = []
    for label in ("aten-default", "aten-avx2", "aten-avx512", "omp-1", "numpy-2.2"):
        results.append(result(label, SOFTMAX, "close" if label in ("aten-default", "aten-avx2") else "identical", max_ulp=6))
        results.append(result(label, LAYER_NORM, "diverged" if label == "aten-default" else "identical", max_ulp=16393))
        results.append(result(label, GELU, "identical"))
    entries = attribute(results, envs, backends={SOFTMAX: "torch", LAYER_NORM: "torch", GELU: "jax"})
    assert [e["line"] for e in entries] == [
        "every environment with torch.cpu_capability=DEFAULT [aten-default] differs from baseline on "
        "models/layer_norm[torch:cpu:float32:eager] y (diverged, 16,393 ulp); the 5 with torch.cpu_capability in "
        "{AVX2, AVX512} agree (also separated by env.ATEN_CPU_CAPABILITY)",
        "every environment with torch.cpu_capability in {AVX2, DEFAULT} [aten-avx2, aten-default] differs from "
        "baseline on models/softmax[torch:cpu:float32:eager] y (close, 6 ulp); the 4 with "
        "torch.cpu_capability=AVX512 agree (also separated by env.ATEN_CPU_CAPABILITY)",
    ]
    first = entries[0]
    assert first["kind"] == "differs" and first["exact"] and first["status"] == "diverged"
    assert first["keys"] == ["torch.cpu_capability"]
    assert first["values"] == {"differing": [["DEFAULT"]], "agreeing": [["AVX2"], ["AVX512"]]}
    assert first["agreeing"] == ["baseline", "aten-avx2", "aten-avx512", "numpy-2.2", "omp-1"]


def test_outputs_with_the_same_cause_share_one_line() -> None:
    envs = environments("baseline", "aten-default", "omp-1")
    results = [result("aten-default", SOFTMAX, "close", max_ulp=3), result("aten-default", LAYER_NORM, "close", max_ulp=9),
               result("omp-1", SOFTMAX, "identical"), result("omp-1", LAYER_NORM, "identical")]
    (entry,) = attribute(results, envs, backends={SOFTMAX: "torch", LAYER_NORM: "torch"})
    assert [m["variant"] for m in entry["members"]] == [LAYER_NORM, SOFTMAX]
    assert entry["line"].startswith(f"every environment with torch.cpu_capability=DEFAULT [aten-default] differs from "
                                    f"baseline on {LAYER_NORM} y (close, 9 ulp), {SOFTMAX} y (close, 3 ulp); the 2 with")


def test_environments_that_did_not_run_a_variant_are_left_out() -> None:
    envs = environments("baseline", "aten-default", "omp-1", "numpy-2.2")
    results = [result("aten-default", SOFTMAX, "close", max_ulp=3), result("omp-1", SOFTMAX, "identical"),
               result("numpy-2.2", SOFTMAX, "error", output=None)]
    (entry,) = attribute(results, envs, backends={SOFTMAX: "torch"})
    assert entry["not_compared"] == ["numpy-2.2"]
    assert entry["agreeing"] == ["baseline", "omp-1"]


def test_no_separating_key_says_so() -> None:
    envs = [Environment("baseline", "a", fp()), Environment("rerun", "a", fp())]
    (entry,) = attribute([result("rerun", SOFTMAX, "close", max_ulp=1)], envs)
    assert not entry["exact"] and entry["keys"] == []
    assert entry["line"] == ("no recorded key separates the environments that differ [rerun] from the 1 that agree, on "
                             "models/softmax[torch:cpu:float32:eager] y (close, 1 ulp): nondeterminism, or a cause "
                             "the fingerprint does not record")


@pytest.mark.parametrize(
    ("paths", "labels"),
    [
        (["bundles/x86-cpu", "bundles/arm-cpu/"], ["x86-cpu", "arm-cpu"]),
        (["a/run", "b/run", "c"], ["a/run", "b/run", "c"]),
        (["same", "same"], ["same", "same#2"]),
    ],
    ids=["folder-names", "clashing-names-keep-paths", "same-path-twice"],
)
def test_bundle_labels(paths: list[str], labels: list[str]) -> None:
    assert bundle_labels(paths) == labels


def record(label: str, outputs: dict[str, Any], errors: tuple[str, ...] = ()) -> RunRecord:
    """An in-memory bundle: one variant per entry of ``outputs``."""
    variants = {}
    for vid, y in outputs.items():
        case, rest = vid.split("[")
        impl, device, dtype, mode = rest[:-1].split(":", 3)
        status = "error" if vid in errors else "ok"
        variants[vid] = VariantRecord(id=vid, case=case, impl=impl, backend=impl, device=device, dtype=dtype, mode=mode,
                                      status=status, error="boom" if status == "error" else None,
                                      outputs={} if status == "error" else {"y": y})
    return RunRecord(environment=ENVS[label], environment_id=f"{label}-id", variants=variants, path=label)


ORT = "models/softmax[onnxruntime:cpu:float32:opt:all]"


def test_compare_bundles_builds_matrix_pairs_and_error_attribution() -> None:
    y = np.linspace(0, 1, 64, dtype=np.float32)
    y_moved = y.copy()
    y_moved[3] = np.nextafter(y_moved[3], np.float32(2))
    records = [
        record("baseline", {SOFTMAX: y, ORT: y}),
        record("aten-default", {SOFTMAX: y_moved, ORT: y}),
        record("numpy-2.2", {SOFTMAX: y, ORT: y}, errors=(ORT,)),
    ]
    labels = ["baseline", "aten-default", "numpy-2.2"]
    results, extra = compare_bundles(records, labels, all_pairs=True)
    assert {(r.candidate_label, r.variant, r.status) for r in results} == {
        ("aten-default", SOFTMAX, "close"), ("aten-default", ORT, "identical"),
        ("numpy-2.2", SOFTMAX, "identical"), ("numpy-2.2", ORT, "error")}
    matrix = extra["matrix"]
    assert matrix["baseline"] == "baseline" and matrix["environments"] == ["aten-default", "numpy-2.2"]
    assert matrix["ids"] == {"baseline": "baseline-id", "aten-default": "aten-default-id", "numpy-2.2": "numpy-2.2-id"}
    assert matrix["cases"] == {"models/softmax": {"aten-default": "close", "numpy-2.2": "error"}}
    assert matrix["variants"][SOFTMAX] == {"aten-default": "close", "numpy-2.2": "identical"}
    assert matrix["pairs"] == [
        {"a": "baseline", "b": "aten-default", "compared": 2, "differing": 1},
        {"a": "baseline", "b": "numpy-2.2", "compared": 1, "differing": 0},
        {"a": "aten-default", "b": "numpy-2.2", "compared": 1, "differing": 1},
    ]
    lines = [e["line"] for e in extra["attribution"]]
    assert lines == [
        "every environment with numpy.version=2.2.6 [numpy-2.2] fails on "
        "models/softmax[onnxruntime:cpu:float32:opt:all] (error); the 2 with numpy.version=2.4.6 run it",
        "every environment with torch.cpu_capability=DEFAULT [aten-default] differs from baseline on "
        "models/softmax[torch:cpu:float32:eager] y (close, 1 ulp); the 2 with torch.cpu_capability=AVX512 agree "
        "(also separated by env.ATEN_CPU_CAPABILITY)",
    ]
    report = build(results, {r.environment_id: r.environment for r in records}, title="t", extra=extra)
    text = render(report, "text")
    assert "attribution:\n  - every environment with numpy.version=2.2.6" in text
    markdown = render(report, "md")
    assert "### Attribution" in markdown and "### Matrix against `baseline`" in markdown
    assert "| `models/softmax` | close | ERROR |" in re.sub(" +", " ", markdown)


def test_two_bundles_add_no_matrix_unless_all_pairs_is_asked() -> None:
    y = np.zeros(4, dtype=np.float32)
    records = [record("baseline", {SOFTMAX: y}), record("omp-1", {SOFTMAX: y})]
    assert compare_bundles(records, ["baseline", "omp-1"])[1] == {}
    assert set(compare_bundles(records, ["baseline", "omp-1"], all_pairs=True)[1]) == {"matrix", "attribution"}


def test_large_key_sets_stop_before_triples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attribution, "MAX_KEYS_FOR_TRIPLES", 1)
    envs = {"a": fp(), "b": fp(numpy__version="2.2.6"), "c": fp(env__OMP_NUM_THREADS="1"),
            "d": fp(numpy__version="2.2.6", env__OMP_NUM_THREADS="1")}
    assert separating_keys([envs["d"]], [envs["a"], envs["b"], envs["c"]])  # pairs are still tried


def test_pairs_hold_a_bundle_read_back_and_an_in_memory_record_of_the_same_outputs_equal(tmp_path: Any) -> None:
    """A loaded record's outputs are known by their stored refs, an in-memory one's by hashing; both
    must name a dtype and shape the same way, or every output would count as differing."""
    from detharness import record as record_mod

    y = np.linspace(0, 1, 64, dtype=np.float32)
    in_memory = record("baseline", {SOFTMAX: y})
    record_mod.save(in_memory, tmp_path / "baseline")
    loaded = record_mod.load(tmp_path / "baseline")
    assert attribution.pairwise_differences([loaded, in_memory], ["loaded", "in-memory"]) == [
        {"a": "loaded", "b": "in-memory", "compared": 1, "differing": 0}]


def test_pairwise_differences_keyword_matches_case_tags_like_run_does() -> None:
    from detharness.record import CaseRecord

    y = np.linspace(0, 1, 8, dtype=np.float32)
    records = [record("baseline", {SOFTMAX: y}), record("aten-default", {SOFTMAX: y + 1})]
    for r in records:
        r.cases["models/softmax"] = CaseRecord(id="models/softmax", fingerprint="f", tags=["attention-family"])
    (pair,) = attribution.pairwise_differences(records, ["baseline", "aten-default"], keyword="attention-family and torch")
    assert (pair["compared"], pair["differing"]) == (1, 1)


def test_a_case_whose_code_changed_is_named_as_a_code_change_not_nondeterminism() -> None:
    """Alike in every environment key, but the case's code changed in one bundle: attribution says so,
    as the two-way ``env_diff`` does (``case.fingerprint``)."""
    from detharness.record import CaseRecord

    y = np.linspace(0, 1, 64, dtype=np.float32)
    records = []
    for label, code, out in (("baseline", "c0de0000aaaa1111", y), ("rerun", "c0de0000aaaa1111", y),
                             ("edited", "feedbeef22223333", y + 1)):
        one = record("baseline", {SOFTMAX: out})
        one.cases = {"models/softmax": CaseRecord(id="models/softmax", fingerprint=code)}
        one.path = label
        records.append(one)
    results, extra = compare_bundles(records, ["baseline", "rerun", "edited"])
    (changed,) = [r for r in results if r.candidate_label == "edited"]
    assert changed.status == "diverged"
    assert changed.env_diff == {"case.fingerprint": ["c0de0000aaaa1111", "feedbeef22223333"]}
    (entry,) = extra["attribution"]
    assert entry["keys"] == ["case.fingerprint"] and entry["exact"]
    assert entry["line"] == ("the case's code changed: every environment with case.fingerprint=feedbeef22223333 "
                             "[edited] differs from baseline on models/softmax[torch:cpu:float32:eager] y (diverged, 1,065,353,216 ulp); "
                             "the 2 with case.fingerprint=c0de0000aaaa1111 agree")
    # Without the case fingerprints (an older caller), the same results are nondeterminism.
    envs = [Environment(label, r.environment_id, r.environment) for label, r in
            zip(["baseline", "rerun", "edited"], records, strict=True)]
    (blind,) = attribute(results, envs)
    assert blind["line"].startswith("no recorded key separates")


def test_a_changed_case_beside_an_environment_change_is_named_first_and_errors_too() -> None:
    envs = environments("baseline", "aten-default", "omp-1")
    results = [result("aten-default", SOFTMAX, "close", max_ulp=3), result("omp-1", SOFTMAX, "identical")]
    code = {"models/softmax": {"baseline": "a", "aten-default": "b", "omp-1": "a"}}
    (entry,) = attribute(results, envs, backends={SOFTMAX: "torch"}, case_fingerprints=code)
    assert entry["keys"] == ["case.fingerprint"]
    assert ["torch.cpu_capability"] in entry["alternatives"]
    assert entry["line"].startswith("the case's code changed: every environment with case.fingerprint=b [aten-default]")
    # A variant that errors only where the code changed.
    outcomes = {SOFTMAX: {"baseline": "ok", "aten-default": "error", "omp-1": "ok"}}
    errors = [result("aten-default", SOFTMAX, "error", output=None), result("omp-1", SOFTMAX, "identical")]
    (failing,) = attribute(errors, envs, backends={SOFTMAX: "torch"}, outcomes=outcomes, case_fingerprints=code)
    assert failing["kind"] == "errors" and failing["keys"] == ["case.fingerprint"]
    assert failing["line"].startswith("the case's code changed: every environment with case.fingerprint=b "
                                      "[aten-default] fails on")
