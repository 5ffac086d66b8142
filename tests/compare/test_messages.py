"""Messages that tell the truth: no error figures across a NaN/inf pattern, no tolerance offered
for an error that is no rounding, integer differences in units."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from detharness.checks.base import verdict_results
from detharness.compare import Status, Verdict, compare
from detharness.compare.core import NOT_ROUNDING_SCALED
from detharness.manifest import RESULT
from detharness.results import Result

FIGURES = ("max_ulp", "mean_ulp", "p99_ulp", "max_abs", "max_rel", "max_scaled")

# -- a NaN/inf-pattern mismatch: null figures, the exact count, the first element -------------------


def nan_pattern_pair() -> tuple[np.ndarray, np.ndarray]:
    expected = np.arange(12, dtype=np.float32).reshape(3, 4) / 4
    actual = expected.copy()
    actual[0, 0] = np.nextafter(actual[0, 0], np.float32(1))  # a finite difference: no figure for it either
    expected[1, 2] = np.nan
    actual[1, 2] = 1.5
    actual[2, 1] = np.inf
    actual[2, 3] = np.nan
    return expected, actual


def test_a_nan_pattern_mismatch_has_null_figures_and_says_how_many_and_where() -> None:
    expected, actual = nan_pattern_pair()
    verdict = compare(expected, actual)
    assert verdict.status is Status.MISMATCH
    assert (verdict.total, verdict.mismatched) == (12, 3)
    assert [getattr(verdict, name) for name in FIGURES] == [None] * 6
    assert verdict.min_passing == {"ulp": None, "rtol": None, "atol": None, "scaled": None}
    assert verdict.first_mismatch_index == [1, 2]
    lines = verdict.message.splitlines()
    assert lines[0] == "MISMATCH | NaN/inf pattern differs: 3 / 12 (25%) of the elements"
    assert lines[2] == (
        "  3 elements are NaN or infinite on one side only, or infinities of opposite signs; "
        "the first at [1, 2]: expected nan, actual 1.5"
    )
    assert lines[3] == "  NaN against a number: 2; infinity against a finite value or the opposite infinity: 1"
    assert "ulp" not in "\n".join(lines[4:9])  # the table lists values, no distances
    assert all((row["ulp"], row["abs"], row["rel"]) == (None, None, None) for row in verdict.worst_elements)


def test_null_figures_survive_json_and_the_result_record() -> None:
    expected, actual = nan_pattern_pair()
    verdict = compare({"y": expected}, {"y": actual})
    data = json.loads(json.dumps(verdict.to_json(), allow_nan=False))
    inner = data["outputs"][0]
    assert [inner[name] for name in FIGURES] == [None] * 6
    assert inner["min_passing"] == {"ulp": None, "rtol": None, "atol": None, "scaled": None}
    again = Verdict.from_json(data).outputs["y"]
    assert [getattr(again, name) for name in FIGURES] == [None] * 6
    assert again.message == verdict.outputs["y"].message and again.mismatched == 3
    (result,) = verdict_results(
        "backend",
        "demo/case",
        "demo/case[np:cpu:float32:eager]",
        verdict,
        baseline="demo/case[ref:cpu:float64:eager]",
        candidate=None,
        reproduce=None,
    )
    record = json.loads(json.dumps(result.to_json(), allow_nan=False))
    RESULT(record, "results[0]")
    assert [record[name] for name in FIGURES] == [None] * 6
    assert Result.from_json(record) == result


def test_an_infinity_pattern_mismatch_alone_also_has_null_figures() -> None:
    verdict = compare(np.array([1.0, np.inf, 3.0]), np.array([1.0, -np.inf, 3.0 + 1e-12]))
    assert verdict.status is Status.MISMATCH
    assert [getattr(verdict, name) for name in FIGURES] == [None] * 6
    assert verdict.message.splitlines()[2] == (
        "  1 element is NaN or infinite on one side only, or infinities of opposite signs; "
        "the first at [1]: expected inf, actual -inf"
    )


# -- a gross difference is no rounding: declare it, do not widen the tolerance ---------------------


def test_a_37_percent_error_offers_a_known_divergence_and_no_tolerance() -> None:
    expected = np.linspace(-1.0, 1.0, 101, dtype=np.float32)
    actual = expected.copy()
    actual[30] += np.float32(0.37)  # the scale is 1: the error is 37% of it
    verdict = compare(expected, actual)
    assert verdict.status is Status.DIVERGED
    last = verdict.message.splitlines()[-1]
    assert last == (
        "  This is not rounding (the largest error is 37% of the output's scale): if it is expected, "
        'declare it: c.known_divergence("<reason>", variants="<variant pattern>")'
    )
    assert "tolerance=" not in verdict.message and "Smallest tolerance" not in verdict.message
    # The figures are still there for the reports and for `detharness tolerances`.
    assert verdict.max_scaled == pytest.approx(0.37, rel=1e-6)
    assert verdict.min_passing["scaled"] == verdict.max_scaled


def test_a_1e_6_error_still_offers_the_tolerance() -> None:
    expected = np.linspace(1.0, 2.0, 101)
    actual = expected.copy()
    actual[30] *= 1 + 1e-6
    verdict = compare(expected, actual)
    assert verdict.status is Status.DIVERGED
    assert "not rounding" not in verdict.message and "known_divergence" not in verdict.message
    last = verdict.message.splitlines()[-1]
    assert last.startswith('  To accept it, use tolerance="close(') and last.endswith(', 1e-7)"')
    assert compare(expected, actual, last.split('"')[1])


@pytest.mark.parametrize(("error", "rounding"), [(1.0, True), (1.5, False), (1000.0, False)])
def test_the_bound_is_one_percent_of_the_scale(error: float, rounding: bool) -> None:
    expected = np.array([100.0, -50.0, 3.0])
    actual = expected + np.array([error, 0.0, 0.0])
    verdict = compare(expected, actual, "ulp(0)")
    assert NOT_ROUNDING_SCALED == 0.01
    assert ("To accept it" in verdict.message) is rounding
    assert ("This is not rounding" in verdict.message) is not rounding
    if error == 1000.0:  # past 1000%, a factor reads better
        assert "(the largest error is 10 times the output's scale)" in verdict.message


def test_the_bound_reads_the_error_beyond_what_the_fraction_allows() -> None:
    expected = np.linspace(1.0, 2.0, 1000, dtype=np.float32)
    actual = expected.copy()
    actual[[10, 20]] *= np.float32(1.5)  # two gross outliers
    actual[100:110] = np.nextafter(actual[100:110], np.float32(3))  # ten 1-ULP differences
    one_allowed = compare(expected, actual, "exact @ 0.001")
    assert one_allowed.status is Status.DIVERGED
    assert one_allowed.message.splitlines()[-1].startswith(
        "  This is not rounding (beyond the 1 allowed, the largest error is "
    )
    # With both outliers allowed, what remains to accept is one ULP: a tolerance, as before.
    two_allowed = compare(expected, actual, "exact @ 0.002")
    assert two_allowed.status is Status.DIVERGED
    assert two_allowed.message.splitlines()[-1] == '  To accept it, use tolerance="ulp(1) @ 0.002"'


def test_against_an_all_zero_reference_the_tolerance_is_still_offered() -> None:
    verdict = compare(np.zeros(4, np.float32), np.array([0, 1e-7, 0, 0], np.float32), "exact")
    assert verdict.status is Status.DIVERGED
    assert verdict.max_scaled == math.inf
    assert "not rounding" not in verdict.message and "To accept it" in verdict.message


# -- integers: differences in units, exact across zero and at the extremes ---------------------------


def test_an_integer_difference_across_zero_is_2_units() -> None:
    verdict = compare(np.array([-1, 5]), np.array([1, 5]))
    assert verdict.status is Status.DIVERGED
    assert (verdict.max_ulp, verdict.p99_ulp, verdict.mean_ulp, verdict.max_abs) == (2, 2, 1.0, 2.0)
    assert verdict.min_passing["ulp"] == 2
    assert verdict.ulp_histogram == {"0": 1, "2-3": 1}
    lines = verdict.message.splitlines()
    assert lines[3] == "  Worst at [0]: expected -1, actual 1 (difference 2 units, rel 2)"
    assert lines[5:7] == [
        "    index  expected  actual  diff (units)  rel err",
        "    [0]    -1        1       2             2",
    ]
    assert lines[7] == "  Difference: max 2 (units), mean 1, p99 2; max rel 2, max scaled 0.4"
    assert (
        lines[-1] == '  To accept it, use tolerance="ulp(2)" (on integers, ulp(n) allows a difference of up to n units)'
    )
    assert "ulp " not in "\n".join(lines[:-2])  # no ULP wording for integers but the rule's own name
    assert compare(np.array([-1, 5]), np.array([1, 5]), "ulp(2)")
    assert not compare(np.array([-1, 5]), np.array([1, 5]), "ulp(1)")
    # No gross-difference rule for integers: a token id is right or wrong, not rounded.
    assert "known_divergence" not in compare(np.array([-100, 5]), np.array([100, 5])).message


def test_a_close_integer_message_says_units() -> None:
    verdict = compare(np.array([-1, 5, 7], np.int32), np.array([1, 5, 6], np.int32), "ulp(2)")
    assert verdict.status is Status.CLOSE
    assert verdict.message == (
        "CLOSE | Within tolerance ulp(2): 2 / 3 (66.7%) not bitwise equal; max difference 2 (units) at [0], max rel 2"
    )


@pytest.mark.parametrize(
    ("dtype", "expected", "actual", "units"),
    [
        (np.int8, -128, 127, 255),
        (np.int32, -(2**31), 2**31 - 1, 2**32 - 1),
        (np.int64, -(2**63), 2**63 - 1, 2**64 - 1),
        (np.int64, 2**63 - 1, -(2**63), 2**64 - 1),
        (np.int64, -3, 2**63 - 1, 2**63 + 2),
        (np.uint64, 0, 2**64 - 1, 2**64 - 1),
        (np.uint64, 2**64 - 1, 2**63, 2**63 - 1),
        (np.uint8, 200, 3, 197),
        (np.bool_, True, False, 1),
    ],
)
def test_integer_extremes_are_exact_unit_differences(dtype: type, expected: int, actual: int, units: int) -> None:
    verdict = compare(np.array([expected, 0], dtype), np.array([actual, 0], dtype))
    assert verdict.max_ulp == units and type(verdict.max_ulp) is int
    assert verdict.p99_ulp == units and verdict.min_passing["ulp"] == units
    assert f"  Difference: max {units} ({'unit' if units == 1 else 'units'})," in verdict.message
    assert compare(np.array([expected, 0], dtype), np.array([actual, 0], dtype), f"ulp({units})")
    if units > 1:
        assert not compare(np.array([expected, 0], dtype), np.array([actual, 0], dtype), f"ulp({units - 1})")
