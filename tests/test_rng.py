"""The rng check: seeded streams reproduce, device streams against CPU streams, streams across bundles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detharness import checks
from detharness.cases import KnownDivergence, builtin_cases_path
from detharness.record import CaseRecord, RunRecord, VariantRecord, load
from tests.conftest import run_cli, write_cases

STREAM_CASES = """
    import os

    import numpy as np

    from detharness import case

    c = case("mine/stream", kind="rng", seed=7)

    @c.impl("pcg64", backend="numpy", dtypes=("float64",))
    def _():
        draws = np.random.default_rng(7).standard_normal(1000)
        start = int(os.environ.get("DH_TEST_STREAM_CHANGES_AT", "-1"))
        if start >= 0:  # as a new library version might: the same seed, other values from here on
            draws[start:] = np.random.default_rng(8).standard_normal(1000 - start)
        return {"normal": draws, "integers": np.random.default_rng(7).integers(0, 10, 50)}

    u = case("mine/unseeded", kind="rng")

    @u.impl("fresh", backend="numpy", dtypes=("float64",))
    def _():
        return {"uniform": np.random.default_rng().random(64)}  # no seed: a new stream at every call

    s = case("mine/compute", inputs=lambda rng: {"x": rng.standard_normal(8)})

    @s.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
    def _(x):
        return {"y": x * 2}
"""


@pytest.fixture
def stream_cases(tmp_path: Path) -> Path:
    return write_cases(tmp_path / "streams", STREAM_CASES)


def _results(stdout: str) -> dict[tuple[str, str], dict]:
    return {(r["variant"], r["output"]): r for r in json.loads(stdout)["results"]}


def test_an_altered_stream_is_an_rng_divergence_with_first_index_and_share(stream_cases: Path, tmp_path: Path) -> None:
    select = ["--cases", str(stream_cases), "-k", "mine/stream", "--in-process"]
    base = run_cli("run", *select, "--out", str(tmp_path / "A"), "--format", "json")
    assert base.returncode == 0, base.stdout + base.stderr
    ran = _results(base.stdout)
    reseeded = ran[("mine/stream[pcg64:cpu:float64:eager]", "normal")]
    assert reseeded["check"] == "rng" and reseeded["status"] == "identical"
    assert "reseeding gave the same stream again: 1000 float64 values [" in reseeded["message"]

    changed = run_cli("run", *select, "--out", str(tmp_path / "B"), env={"DH_TEST_STREAM_CHANGES_AT": "300"})
    assert changed.returncode == 0, changed.stdout + changed.stderr  # reproducible in itself

    compared = run_cli("compare", str(tmp_path / "A"), str(tmp_path / "B"), "--format", "json")
    assert compared.returncode == 1, compared.stdout + compared.stderr
    results = _results(compared.stdout)
    normal = results[("mine/stream[pcg64:cpu:float64:eager]", "normal")]
    assert normal["check"] == "rng"
    assert normal["status"] == "diverged"
    assert normal["first_mismatch_index"] == [300]
    assert normal["tolerance"] == "exact"
    assert normal["message"].startswith("stream parts from the baseline's at index 300; 700 / 1000 (70%) of values differ\n")
    assert results[("mine/stream[pcg64:cpu:float64:eager]", "integers")]["status"] == "identical"
    assert results[("mine/stream[pcg64:cpu:float64:eager]", "integers")]["check"] == "rng"


def test_a_stream_that_ignores_its_seed_fails_the_reseed_check(stream_cases: Path) -> None:
    result = run_cli("run", "--cases", str(stream_cases), "--in-process", "--format", "json")
    assert result.returncode == 1
    results = _results(result.stdout)
    unseeded = results[("mine/unseeded[fresh:cpu:float64:eager]", "uniform")]
    assert (unseeded["check"], unseeded["status"]) == ("rng", "diverged")
    assert unseeded["message"].startswith("stream parts from the first draw's at index 0; 64 / 64 (100%) of values differ")
    assert unseeded["reproduce"] == (f"detharness run --cases {stream_cases} -k "
                                     "'mine/unseeded[fresh:cpu:float64:eager]' --check rng")
    assert {r["check"] for r in results.values() if r["case"] == "mine/stream"} == {"rng"}


def test_check_rng_runs_only_the_rng_variants(stream_cases: Path, tmp_path: Path) -> None:
    result = run_cli("run", "--cases", str(stream_cases), "--in-process", "--check", "rng", "-k", "not unseeded",
                     "--format", "json", "--out", str(tmp_path / "A"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert {r["check"] for r in json.loads(result.stdout)["results"]} == {"rng"}
    assert list(json.loads((tmp_path / "A" / "manifest.json").read_text())["variants"]) == [
        "mine/stream[pcg64:cpu:float64:eager]"]


def test_builtin_streams_reproduce_and_match_the_documented_first_values(tmp_path: Path) -> None:
    """DIVERGENCES.md's seed-0 values; jax's partitionable flag set by one variant leaks into no other."""
    result = run_cli("run", "--tag", "rng", "--device", "cpu", "--out", str(tmp_path / "A"), "--format", "json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    report = json.loads(result.stdout)
    assert set(report["summary"]) == {"identical"}
    assert {r["check"] for r in report["results"]} == {"rng"}
    record = load(tmp_path / "A")

    def first(variant: str, output: str, n: int = 3) -> list[float]:
        return np.asarray(record.variants[variant].outputs[output]).ravel()[:n].tolist()

    assert first("rng/torch[generator:cpu:float32:eager]", "randn_short") == pytest.approx([1.5410, -0.2934, -2.1788],
                                                                                          abs=1e-4)
    # 16 values or more take torch's vectorized path: another stream from the same seed.
    assert first("rng/torch[generator:cpu:float32:eager]", "randn") == pytest.approx([-1.1258, -1.1524, -0.2506], abs=1e-4)
    assert first("rng/torch[global:cpu:float32:eager]", "randn") == first("rng/torch[generator:cpu:float32:eager]", "randn")
    assert first("rng/numpy[random_state:cpu:float64:eager]", "normal") == pytest.approx([1.764, 0.400, 0.979], abs=1e-3)
    assert first("rng/numpy[pcg64:cpu:float64:eager]", "normal") == pytest.approx([0.126, -0.132, 0.640], abs=1e-3)
    assert first("rng/jax[threefry:cpu:float32:jit]", "normal") == pytest.approx([1.623, 2.025, -0.434], abs=1e-3)
    # The stream of jax before 0.5 (its values depend on the draw's size, another trait it lost).
    assert first("rng/jax[threefry-nonpartitionable:cpu:float32:jit]", "normal") == pytest.approx(
        [2.1943657, 0.79543525, 0.30030745], abs=1e-6)
    # rbg runs after threefry-nonpartitionable in the same worker: its split keys are the
    # partitionable ones, so the flag did not leak out of the variant that set it.
    assert first("rng/jax[rbg:cpu:float32:jit]", "split", 2) == [1797259609, 2579123966]
    assert first("rng/jax[rbg-nonpartitionable:cpu:float32:jit]", "split", 2) == [2285895361, 1501764800]
    assert first("rng/jax[unsafe_rbg:cpu:float32:jit]", "normal") != first("rng/jax[threefry:cpu:float32:jit]", "normal")

    same = run_cli("compare", str(tmp_path / "A"), str(tmp_path / "A"), "--format", "json")
    assert same.returncode == 0
    assert {(r["check"], r["status"]) for r in json.loads(same.stdout)["results"]} == {("rng", "identical")}


# -- the check itself, on records built by hand: a CUDA runner without a GPU here -------------------


def _stream_record(cpu: np.ndarray, cuda: np.ndarray, environment: dict[str, str]) -> RunRecord:
    known = KnownDivergence(reason="the CUDA generator is another algorithm (pytorch#79496)", variants="*[*:cuda:*",
                            against="*[*:cpu:*", checks=("rng",))
    case = CaseRecord(id="rng/t", fingerprint="f", kind="rng", known=[known])
    record = RunRecord(environment=environment, environment_id="e" * 64, cases={"rng/t": case})
    for device, stream in (("cpu", cpu), ("cuda", cuda)):
        vid = f"rng/t[gen:{device}:float32:eager]"
        record.variants[vid] = VariantRecord(id=vid, case="rng/t", impl="gen", backend="torch", device=device,
                                             dtype="float32", mode="eager", status="ok", outputs={"randn": stream},
                                             distinct_results=1)
    return record


def test_a_cuda_stream_against_the_cpu_stream_is_known_but_a_changed_cuda_stream_is_not() -> None:
    cpu = np.random.default_rng(0).standard_normal(100).astype(np.float32)
    cuda = np.random.default_rng(1).standard_normal(100).astype(np.float32)
    record = _stream_record(cpu, cuda, {"torch.version": "2.13"})
    by_baseline = {r.baseline: r for r in checks.CHECKS["rng"].judge(record)}
    against_cpu = by_baseline["rng/t[gen:cpu:float32:eager]"]
    assert against_cpu.status == "known" and against_cpu.underlying_status == "diverged"
    assert against_cpu.known_reason == "the CUDA generator is another algorithm (pytorch#79496)"
    assert "stream parts from the CPU stream's at index 0" in against_cpu.message
    assert by_baseline["rng/t[gen:cuda:float32:eager] draw 1"].status == "identical"

    later = cuda.copy()
    later[40:] += 1
    newer = _stream_record(cpu, later, {"torch.version": "2.14"})
    across = {r.variant: r for r in checks.environment_check(record, newer)}
    cuda_result = across["rng/t[gen:cuda:float32:eager]"]
    assert (cuda_result.check, cuda_result.status) == ("rng", "diverged")
    assert cuda_result.first_mismatch_index == [40]
    assert cuda_result.env_diff == {"torch.version": ["2.13", "2.14"]}
    assert across["rng/t[gen:cpu:float32:eager]"].status == "identical"


def test_builtin_rng_cases_declare_kind_and_tag() -> None:
    from detharness.cases import discover

    registry = discover([builtin_cases_path() / "rng"])
    assert sorted(c.id for c in registry) == ["rng/jax", "rng/numpy", "rng/torch"]
    assert all(c.kind == "rng" and "rng" in c.tags for c in registry)
    assert registry["rng/torch"].known_for("rng/torch[generator:cuda:float32:eager]", "rng", {},
                                           "rng/torch[generator:cpu:float32:eager]") is not None
    assert registry["rng/torch"].known_for("rng/torch[generator:cuda:float32:eager]", "rng", {},
                                           "0123456789ab:rng/torch[generator:cuda:float32:eager]") is None
