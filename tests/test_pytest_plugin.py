"""The pytest plugin end to end, through pytester in fresh pytest processes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.conftest import SMALL_CASES

pytestmark = pytest.mark.slow

KNOWN_CASE = """
    import numpy as np
    from detharness import case

    c = case("skew/rounding", inputs=lambda rng: {"x": np.linspace(-3, 3, 13)})
    c.known_divergence("serving rounds half away from zero", variants="*[serving:*")

    @c.impl("training", backend="numpy", reference=True, dtypes=("float64",))
    def _(x):
        return {"y": np.round(x * 2.5)}

    @c.impl("serving", backend="numpy", dtypes=("float64",))
    def _(x):
        return {"y": np.trunc(x * 2.5 + np.copysign(0.5, x))}
"""


def _cases(pytester: pytest.Pytester, text: str = SMALL_CASES) -> Path:
    folder = pytester.mkdir("my_cases")
    (folder / "cases.py").write_text(textwrap.dedent(text))
    return folder


def test_no_items_without_dh_cases(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_one():\n    assert True\n")
    result = pytester.runpytest_subprocess("-q")
    result.assert_outcomes(passed=1)


def test_items_per_variant_check_with_markers(pytester: pytest.Pytester) -> None:
    folder = _cases(pytester)
    result = pytester.runpytest_subprocess("--dh-cases", str(folder), "-m", "torch and cpu", "-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*backend:small/scale?torch:cpu:float32:eager?*PASSED*",
                                 "*backend:small/scale?torch:cpu:float16:eager?*PASSED*"])


def test_cuda_variants_skip_without_gpu_and_fail_under_require_cuda(pytester: pytest.Pytester) -> None:
    folder = _cases(pytester)
    skipped = pytester.runpytest_subprocess("--dh-cases", str(folder), "-m", "cuda and torch", "-rs")
    skipped.assert_outcomes(skipped=6)
    skipped.stdout.fnmatch_lines(["*no cuda device seen by torch*"])
    required = pytester.runpytest_subprocess("--dh-cases", str(folder), "-m", "cuda and torch", "--dh-require-cuda")
    required.assert_outcomes(failed=6)


def test_known_divergence_is_xfail(pytester: pytest.Pytester) -> None:
    folder = _cases(pytester, KNOWN_CASE)
    result = pytester.runpytest_subprocess("--dh-cases", str(folder), "-m", "cpu", "-rx")
    result.assert_outcomes(xfailed=1)
    result.stdout.fnmatch_lines(["*serving rounds half away from zero*"])


def test_divergence_fails_with_the_message_and_reproduce_line(pytester: pytest.Pytester) -> None:
    folder = _cases(pytester, KNOWN_CASE.replace('c.known_divergence("serving rounds half away from zero", variants="*[serving:*")', ""))
    result = pytester.runpytest_subprocess("--dh-cases", str(folder), "-m", "cpu")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*diverged:*", "*reproduce: detharness run --cases * -k 'skew/rounding?serving:cpu:float64:eager?' --check backend*"])


def test_two_xdist_workers_record_into_one_bundle(pytester: pytest.Pytester) -> None:
    folder = _cases(pytester)
    bundle = pytester.path / "recorded"
    result = pytester.runpytest_subprocess("--dh-cases", str(folder), "-m", "cpu", "-n", "2", "--dh-record", str(bundle))
    result.assert_outcomes(passed=4)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert len(list((bundle / "parts").glob("*.json"))) == 2
    assert sorted(manifest["variants"]) == [
        "small/scale[numpy32:cpu:float32:eager]", "small/scale[numpy:cpu:float64:eager]",
        "small/scale[torch:cpu:float16:eager]", "small/scale[torch:cpu:float32:eager]",
        "small/softmax[numpy:cpu:float64:eager]", "small/softmax[torch:cpu:float32:eager]",
    ]
    assert len(manifest["verdicts"]) == 4

    again = pytester.runpytest_subprocess("--dh-cases", str(folder), "-m", "cpu", "--dh-baseline", str(bundle), "-v")
    again.assert_outcomes(passed=10)
    again.stdout.fnmatch_lines(["*environment:small/scale?torch:cpu:float32:eager?*PASSED*"])
