"""Does it matter, and who is wrong: accuracy against the float64 oracle, decision flips and
distribution shift on real runs of small numpy cases (detharness/checks/measures.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detharness.checks.measures import allowed_error
from tests.conftest import run_cli, write_cases

ORACLE_CASES = """
    import numpy as np

    from detharness import case

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    c = case("acc/softmax", tolerance="scaled(1e-3)",
             inputs=lambda rng: {"x": rng.standard_normal((64, 128)).astype("float32")})

    # The reference at float64 is the oracle; at float32 it is the accuracy's baseline.
    @c.impl("numpy", backend="numpy", reference=True, dtypes=("float64", "float32"))
    def _(x):
        return {"p": softmax(x)}

    @c.impl("reordered", backend="numpy", dtypes=("float32",))
    def _(x):  # the same formula, summed in another order: rounding noise
        e = np.exp(x - x.max(-1, keepdims=True))
        return {"p": e / e[..., ::-1].sum(-1, keepdims=True)}

    @c.impl("noisy", backend="numpy", dtypes=("float32",))
    def _(x):  # an error 50x float32's rounding
        p = softmax(x)
        return {"p": p + 50 * np.spacing(p) * np.where(np.arange(p.size).reshape(p.shape) % 2, 1, -1)}
"""

FLIP_CASES = """
    import numpy as np

    from detharness import case

    c = case("flip/head", tolerance="close(1e-3, 1e-3)", decisions={"logits": "argmax"},
             inputs=lambda rng: {"x": rng.standard_normal((32, 4)).astype("float32")})

    def logits(x):
        out = np.array(x, dtype=x.dtype)
        out[7] = [1.0, 1.0005, 0.0, -1.0]   # row 7: class 1 wins by 5e-4
        return out

    @c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
    def _(x):
        return {"logits": logits(x)}

    @c.impl("served", backend="numpy", dtypes=("float32",))
    def _(x):
        out = logits(x)
        out[7, 0] += 0.001   # the runner-up moves past the top, within close(1e-3, 1e-3)
        return {"logits": out}
"""

SHIFT_CASES = """
    import numpy as np

    from detharness import case

    c = case("shift/scale", tags={"preprocessing"}, tolerance="scaled(1)",
             inputs=lambda rng: {"x": rng.standard_normal(4000)})

    @c.impl("training", backend="numpy", reference=True, dtypes=("float64",))
    def _(x):
        return {"z": (x - x.mean()) / x.std()}

    @c.impl("serving", backend="numpy", dtypes=("float64",))
    def _(x):  # standardized with stale statistics: the feature moved by half a std
        return {"z": (x - x.mean()) / x.std() + 0.5}

    b = case("shift/bucket", tags={"skew"}, inputs=lambda rng: {"x": rng.uniform(0, 100, 2000)})

    @b.impl("training", backend="numpy", reference=True, dtypes=("float64",))
    def _(x):
        return {"bucket": np.digitize(x, [25, 50, 75], right=True)}

    @b.impl("serving", backend="numpy", dtypes=("float64",))
    def _(x):
        return {"bucket": np.digitize(np.round(x), [25, 50, 75])}
"""


def _run(tmp_path: Path, cases: str, *args: str) -> tuple[int, dict[str, Any]]:
    file = write_cases(tmp_path, cases)
    result = run_cli("run", "--cases", str(file), "--in-process", "--format", "json", *args, cwd=tmp_path)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def _by_impl(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["variant"].split("[")[1].split(":")[0] + ":" + r["variant"].split(":")[2]: r
            for r in report["results"] if r["check"] == "backend" and r["output"]}


def test_a_planted_error_reads_candidate_worse_and_a_reordered_sum_rounding_noise(tmp_path: Path) -> None:
    code, report = _run(tmp_path, ORACLE_CASES)
    results = _by_impl(report)
    noisy, reordered = results["noisy:float32"]["accuracy"], results["reordered:float32"]["accuracy"]
    assert noisy["oracle"] == "acc/softmax[numpy:cpu:float64:eager]"
    assert noisy["baseline"] == "acc/softmax[numpy:cpu:float32:eager]"
    assert noisy["metric"] == "rms" and noisy["reading"] == "candidate-worse" and noisy["ratio"] > 10
    assert reordered["reading"] == "rounding-noise" and 0.5 < reordered["ratio"] < 2
    # It adds information and changes no status: both pass scaled(1e-3).
    assert {results["noisy:float32"]["status"], results["reordered:float32"]["status"]} <= {"close", "identical"}
    assert code == 0


def test_a_case_without_a_float64_variant_has_no_accuracy(tmp_path: Path) -> None:
    _, report = _run(tmp_path, ORACLE_CASES.replace('dtypes=("float64", "float32")', 'dtypes=("float32",)'))
    assert all(r["accuracy"] is None for r in report["results"])


def test_a_decision_that_flips_within_tolerance_is_flipped_and_fails_the_run(tmp_path: Path) -> None:
    code, report = _run(tmp_path, FLIP_CASES)
    result = _by_impl(report)["served:float32"]
    assert result["status"] == "flipped" and code == 1
    decision = result["decision"]
    assert decision["rule"] == "argmax" and decision["flips"] == 1 and decision["total"] == 32
    assert decision["indices"] == [[7]] and decision["margins"][0] == pytest.approx(5e-4, rel=1e-3)
    assert decision["near_ties"] == 1  # the margin is within the output's tolerance
    assert result["message"].startswith("FLIPPED | Output: 'logits' | argmax: 1 of 32 rows decide otherwise")
    assert result["reproduce"]
    # flipped is in the default --fail-on, and only there.
    code, _ = _run(tmp_path, FLIP_CASES, "--fail-on", "diverged,mismatch,error")
    assert code == 0


def test_a_flip_budget_and_a_known_divergence_cover_a_flip(tmp_path: Path) -> None:
    code, report = _run(tmp_path, FLIP_CASES.replace('"argmax"', '"argmax @ 5%"'))
    result = _by_impl(report)["served:float32"]
    assert code == 0 and result["status"] == "close" and result["decision"]["flips"] == 1
    known = FLIP_CASES + '    c.known_divergence("serving rounds its logits", variants="*[served:*")\n'
    code, report = _run(tmp_path, known)
    result = _by_impl(report)["served:float32"]
    assert code == 0 and result["status"] == "known" and result["underlying_status"] == "flipped"


def test_a_bad_decision_rule_fails_at_definition_naming_the_case(tmp_path: Path) -> None:
    file = write_cases(tmp_path, FLIP_CASES.replace('"argmax"', '"argmin"'))
    result = run_cli("list", "--cases", str(file))
    assert result.returncode == 2
    assert result.stderr.startswith("detharness: error: ") and "flip/head" in result.stderr
    assert "'logits'" in result.stderr and "argmin" in result.stderr


def test_preprocessing_outputs_report_their_shift(tmp_path: Path) -> None:
    _, report = _run(tmp_path, SHIFT_CASES)
    shifted = next(r for r in report["results"] if r["case"] == "shift/scale" and r["output"] == "z")
    assert shifted["shift"]["psi"] > 0.1 and shifted["shift"]["wasserstein"] == pytest.approx(0.5, rel=1e-6)
    assert shifted["shift"]["jsd"] is None
    bucket = next(r for r in report["results"] if r["case"] == "shift/bucket" and r["output"] == "bucket")
    assert bucket["shift"]["psi"] is None and 0 < bucket["shift"]["jsd"] < 0.01


def test_the_tolerance_in_force_sizes_the_near_ties() -> None:
    expected = np.array([1.0, -2.0, 0.0])
    assert allowed_error("close(0.1, 0.01)", expected, np.dtype("float32")) == pytest.approx([0.11, 0.21, 0.01])
    assert allowed_error("scaled(0.5)", expected, np.dtype("float32")) == 1.0
    assert allowed_error("ulp(2)", expected, np.dtype("float32")) == pytest.approx(2 * 2.0**-23 * np.abs(expected))
    assert allowed_error("ulp(1) | close(0, 0.5)", expected, np.dtype("float32")) == pytest.approx([0.5, 0.5, 0.5])
    assert allowed_error(None, expected, np.dtype("float32")) is None


def test_a_decision_for_an_output_the_case_does_not_have_is_said(tmp_path: Path) -> None:
    _, report = _run(tmp_path, FLIP_CASES.replace('decisions={"logits": "argmax"}', 'decisions={"logit": "argmax"}'))
    result = _by_impl(report)["served:float32"]
    assert result["status"] == "close" and result["decision"] is None
    assert "decisions declared for outputs this variant does not have: 'logit'" in result["message"]
