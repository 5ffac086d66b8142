"""Decision rules: their text, and flip counts, margins and near ties against planted changes."""

from __future__ import annotations

import json
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from detharness.compare.decision import Decision, DecisionError, decision_flips
from detharness.errors import DtypeError, UsageError

RNG_SEED = 20240611


def logits(rows: int = 64, classes: int = 10, seed: int = RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, classes))


# -- text ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical", "decision"),
    [
        ("argmax", "argmax", Decision("argmax")),
        (" ARGMAX ", "argmax", Decision("argmax")),
        ("sign", "sign", Decision("sign")),
        ("topk(5)", "topk(5)", Decision("topk", k=5)),
        ("topk ( +5 )", "topk(5)", Decision("topk", k=5)),
        ("threshold(0.5)", "threshold(0.5)", Decision("threshold", threshold=0.5)),
        ("threshold(-1.0E-05)", "threshold(-1e-5)", Decision("threshold", threshold=-1e-5)),
        ("threshold(3)", "threshold(3)", Decision("threshold", threshold=3.0)),
        ("argmax @ 0.01", "argmax @ 0.01", Decision("argmax", budget=0.01)),
        ("argmax @ 1%", "argmax @ 0.01", Decision("argmax", budget=0.01)),
        ("topk(3)@0.5%", "topk(3) @ 0.005", Decision("topk", k=3, budget=0.005)),
        ("sign @ 0", "sign", Decision("sign")),
        ("sign @ 100%", "sign @ 1", Decision("sign", budget=1.0)),
    ],
)
def test_parse_gives_the_canonical_form(text: str, canonical: str, decision: Decision) -> None:
    assert Decision.parse(text) == decision
    assert str(decision) == canonical
    assert Decision.parse(canonical) == decision


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty text at position 0"),
        ("argmin", "unknown rule 'argmin' at position 0"),
        ("topk", "expected '(' but found end of text at position 4"),
        ("topk(0)", "topk() takes a whole number K >= 1, got 0 at position 5"),
        ("topk(-2)", "topk() takes a whole number K >= 1, got -2 at position 5"),
        ("topk(2.5)", "topk() takes a whole number K >= 1, got 2.5 at position 5"),
        ("topk(3", "expected ')' but found end of text at position 6"),
        ("threshold()", "expected a number T but found ')' at position 10"),
        ("threshold(inf)", "expected a number T but found 'inf' at position 10"),
        ("threshold(1e999)", "threshold() takes a finite number, got 1e999 at position 10"),
        ("argmax @ 1.5", "the allowed fraction must be between 0 and 1 (0% and 100%), got 1.5 at position 9"),
        ("argmax @ 150%", "the allowed fraction must be between 0 and 1 (0% and 100%), got 150 at position 9"),
        ("argmax @ -0.1", "the allowed fraction must be between 0 and 1 (0% and 100%), got -0.1 at position 9"),
        ("argmax @", "expected a fraction of decisions but found end of text at position 8"),
        ("argmax junk", "unexpected 'junk' at position 7"),
        ("argmax(2)", "unexpected '(' at position 6"),
        ("topk(2) @ 0.1 %%", "unexpected '%' at position 15"),
        ("argmax ! 0.1", "unexpected '!' at position 7"),
        ("5", "expected a rule but found '5' at position 0"),
    ],
)
def test_bad_text_is_one_line_naming_the_text_and_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(DecisionError) as raised:
        Decision.parse(text)
    assert str(raised.value).startswith(f"cannot parse decision {text!r}: {message}; expected 'argmax', 'topk(K)'")
    assert "\n" not in str(raised.value)
    assert isinstance(raised.value, ValueError)
    assert isinstance(raised.value, UsageError)


def test_parse_refuses_what_is_not_text() -> None:
    with pytest.raises(DecisionError, match="a decision is text"):
        Decision.parse(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Decision("argmin"), "unknown decision rule 'argmin'"),
        (lambda: Decision("topk"), "topk needs a whole number K >= 1, got None"),
        (lambda: Decision("topk", k=0), "topk needs a whole number K >= 1, got 0"),
        (lambda: Decision("argmax", k=2), "only topk takes K"),
        (lambda: Decision("threshold"), "threshold needs a finite number T, got None"),
        (lambda: Decision("threshold", threshold=float("nan")), "threshold needs a finite number T"),
        (lambda: Decision("sign", threshold=1.0), "only threshold takes T"),
        (lambda: Decision("argmax", budget=1.5), r"must be in \[0, 1\], got 1.5"),
        (lambda: Decision("argmax", budget=float("nan")), r"must be in \[0, 1\], got nan"),
    ],
)
def test_constructor_errors(build: Any, message: str) -> None:
    with pytest.raises(DecisionError, match=message):
        build()


budgets = st.one_of(
    st.just(0.0), st.floats(min_value=0, max_value=1), st.integers(0, 100).map(lambda percent: percent / 100)
)
decisions = st.one_of(
    st.sampled_from(["argmax", "sign"]).map(Decision),
    st.integers(1, 10_000).map(lambda k: Decision("topk", k=k)),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda t: Decision("threshold", threshold=t)),
)


@settings(max_examples=200, deadline=None)
@given(decision=decisions, budget=budgets)
def test_canonical_text_parses_back_to_an_equal_decision(decision: Decision, budget: float) -> None:
    decision = Decision(decision.rule, decision.k, decision.threshold, budget)
    text = str(decision)
    assert Decision.parse(text) == decision
    assert str(Decision.parse(text)) == text
    assert ("@" in text) == (budget != 0)


def test_percent_budget_is_exact() -> None:
    # 0.29 as a float is below 29/100; the percent form must land on the same float as "0.29".
    assert Decision.parse("argmax @ 29%") == Decision.parse("argmax @ 0.29")
    assert Decision.parse("argmax @ 29%").allowed_flips(100) == 29


# -- argmax ------------------------------------------------------------------------------------------


def planted_argmax(gap: float) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Logits whose row 17 has its top only ``gap`` above the runner-up, and a candidate that
    moves that runner-up past the top by a hair. Returns expected, actual, the row, the margin."""
    expected = logits()
    row = 17
    order = np.argsort(expected[row])
    top, runner_up = order[-1], order[-2]
    expected[row, runner_up] = expected[row, top] - gap
    actual = expected.copy()
    actual[row, runner_up] = np.nextafter(expected[row, top], np.inf)
    margin = float(expected[row, top] - expected[row, runner_up])
    return expected, actual, row, margin


def test_argmax_counts_one_planted_flip_with_its_margin() -> None:
    expected, actual, row, margin = planted_argmax(gap=1e-6)
    result = decision_flips(Decision.parse("argmax"), expected, actual)
    assert result == {
        "rule": "argmax",
        "budget": 0.0,
        "total": 64,
        "flips": 1,
        "exceeds": True,
        "indices": [[row]],
        "margins": [margin],
        "near_ties": 0,
    }
    assert margin == pytest.approx(1e-6)


def test_a_flip_within_twice_the_tolerance_is_a_near_tie() -> None:
    expected, actual, _, margin = planted_argmax(gap=1e-6)
    assert decision_flips("argmax", expected, actual, tolerance_abs=margin / 2)["near_ties"] == 1
    assert decision_flips("argmax", expected, actual, tolerance_abs=margin / 2.01)["near_ties"] == 0
    # An elementwise tolerance: a row's tolerance is its largest element's.
    tolerance = np.full(expected.shape, 1e-9)
    tolerance[17, 3] = margin
    assert decision_flips("argmax", expected, actual, tolerance_abs=tolerance)["near_ties"] == 1
    tolerance[17, 3] = 1e-9
    assert decision_flips("argmax", expected, actual, tolerance_abs=tolerance)["near_ties"] == 0


def test_argmax_rows_are_all_leading_axes() -> None:
    expected = logits(24, 5).reshape(2, 3, 4, 5)
    actual = expected.copy()
    actual[1, 2, 0] *= -1
    actual[0, 1, 3] *= -1
    result = decision_flips("argmax", expected, actual)
    assert result["total"] == 24
    assert result["flips"] == 2
    assert result["indices"] == [[0, 1, 3], [1, 2, 0]]
    json.dumps(result, allow_nan=False)


def test_a_vector_is_one_row() -> None:
    result = decision_flips("argmax", np.array([1.0, 3.0, 2.0]), np.array([1.0, 2.0, 3.0]))
    assert (result["total"], result["flips"], result["indices"], result["margins"]) == (1, 1, [[]], [1.0])


def test_indices_list_at_most_ten_but_count_every_flip() -> None:
    expected = logits(50, 4)
    actual = -expected
    result = decision_flips("argmax", expected, actual, tolerance_abs=0.0)
    assert result["flips"] == 50
    assert result["indices"] == [[i] for i in range(10)]
    assert len(result["margins"]) == 10
    assert all(isinstance(m, float) and m > 0 for m in result["margins"])


def test_argmax_nan_is_the_largest_on_both_sides() -> None:
    nan = float("nan")
    expected = np.array([[1.0, nan, 3.0], [1.0, nan, 3.0], [1.0, 2.0, np.inf], [-0.0, 0.0, -1.0]])
    actual = np.array([[1.0, nan, 4.0], [1.0, 2.0, 3.0], [1.0, nan, np.inf], [0.0, -0.0, -1.0]])
    result = decision_flips("argmax", expected, actual)
    # Row 0: the same NaN wins. Row 1: the reference's NaN wins, the candidate's 3 does. Row 2: the
    # candidate's NaN beats the infinity. Row 3: -0 and +0 tie, and the first wins on both sides.
    assert result["indices"] == [[1], [2]]
    assert result["margins"] == [None, None]  # NaN - 3 and inf - 2 are not finite margins
    json.dumps(result, allow_nan=False)


def test_argmax_ties_go_to_the_lowest_index() -> None:
    assert decision_flips("argmax", np.array([[2.0, 2.0, 1.0]]), np.array([[2.0, 2.0, 1.0]]))["flips"] == 0
    result = decision_flips("argmax", np.array([[2.0, 2.0, 1.0]]), np.array([[2.0, 2.5, 1.0]]))
    assert (result["flips"], result["margins"]) == (1, [0.0])


def test_integers_compare_exactly() -> None:
    big = np.array([[2**62 + 1, 2**62, 0]], dtype=np.int64)  # equal as float64
    assert decision_flips("argmax", big, big[:, [1, 0, 2]])["flips"] == 1
    huge = np.array([[2**64 - 1, 2**64 - 2, 5]], dtype=np.uint64)
    assert decision_flips("argmax", huge, huge[:, [1, 0, 2]])["flips"] == 1
    assert decision_flips("topk(2)", huge, huge[:, [1, 0, 2]])["flips"] == 0
    small = np.array([[1, 5, 3], [7, 7, 0]], dtype=np.int8)
    result = decision_flips("argmax", small, np.array([[5.0, 1.0, 3.0], [7.0, 8.0, 0.0]], dtype=np.float32))
    assert (result["indices"], result["margins"]) == ([[0], [1]], [2.0, 0.0])
    assert decision_flips("sign", np.array([True, False]), np.array([1, 0], dtype=np.uint8))["flips"] == 0


@settings(max_examples=100, deadline=None)
@given(
    data=st.lists(
        st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=6, max_size=6, unique=True), min_size=1, max_size=8
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_argmax_flips_are_symmetric(data: list[list[float]], seed: int) -> None:
    expected = np.array(data)
    rng = np.random.default_rng(seed)
    actual = expected + rng.normal(scale=0.5, size=expected.shape) * np.abs(expected).max()
    if any(len(set(row)) < len(row) for row in actual.tolist()):
        return
    forward = decision_flips("argmax", expected, actual)
    backward = decision_flips("argmax", actual, expected)
    assert forward["flips"] == backward["flips"]
    assert forward["indices"] == backward["indices"]


# -- topk --------------------------------------------------------------------------------------------


def test_topk_compares_sets_and_ignores_order_within_them() -> None:
    expected = np.array([[5.0, 4.0, 3.0, 2.0, 1.0], [0.1, 0.4, 0.3, 0.2, 0.5]])
    # The same top-3 sets, {0, 1, 2} and {1, 2, 4}, ranked in another order.
    reordered = np.array([[4.0, 3.0, 5.0, 2.0, 1.0], [0.1, 0.3, 0.5, 0.2, 0.4]])
    assert decision_flips("topk(3)", expected, reordered)["flips"] == 0
    swapped = expected.copy()
    swapped[1, [3, 2]] = swapped[1, [2, 3]]  # 0.3 (in the set) and 0.2 (out) trade places
    result = decision_flips("topk(3)", expected, swapped)
    assert (result["flips"], result["indices"]) == (1, [[1]])
    assert result["margins"] == [pytest.approx(0.1)]  # the 3rd largest, 0.3, over the 4th, 0.2
    assert decision_flips("topk(2)", expected, swapped)["flips"] == 0
    assert decision_flips("topk(1)", expected, swapped) == {
        **decision_flips("argmax", expected, swapped),
        "rule": "topk(1)",
    }


def test_topk_ties_and_nans_on_both_sides_alike() -> None:
    tied = np.array([[1.0, 1.0, 1.0, 0.0]])
    assert decision_flips("topk(2)", tied, tied.copy())["flips"] == 0
    result = decision_flips("topk(2)", tied, np.array([[1.0, 1.0, 1.5, 0.0]]), tolerance_abs=0.0)
    assert (result["flips"], result["margins"], result["near_ties"]) == (1, [0.0], 1)
    nan = float("nan")
    with_nan = np.array([[nan, 1.0, 2.0, 3.0]])
    assert decision_flips("topk(2)", with_nan, np.array([[nan, 1.0, 2.5, 3.0]]))["flips"] == 0
    assert decision_flips("topk(2)", with_nan, np.array([[0.0, 1.0, 2.5, 3.0]]))["flips"] == 1


# -- elementwise rules ---------------------------------------------------------------------------------


def test_threshold_is_strictly_above() -> None:
    expected = np.array([[0.2, 0.5, 0.7], [0.49, float("nan"), 0.51]])
    actual = np.array([[0.2, 0.50001, 0.7], [0.51, 0.9, 0.51]])
    result = decision_flips("threshold(0.5)", expected, actual, tolerance_abs=0.011)
    assert result["total"] == 6
    assert result["indices"] == [[0, 1], [1, 0], [1, 1]]  # 0.5 is not above 0.5; NaN never is
    assert result["margins"] == [0.0, pytest.approx(0.01), None]
    assert result["near_ties"] == 2


def test_sign_has_zero_and_nan_classes() -> None:
    nan = float("nan")
    expected = np.array([-2.0, -0.0, 0.0, 3.0, nan, 1e-9, nan])
    actual = np.array([-1.0, 0.0, -0.0, 0.0, nan, -1e-9, 1.0])
    result = decision_flips("sign", expected, actual, tolerance_abs=np.full(7, 1e-8))
    assert result["indices"] == [[3], [5], [6]]
    assert result["margins"] == [3.0, 1e-9, None]
    assert result["near_ties"] == 1


def test_elementwise_rules_on_a_scalar() -> None:
    result = decision_flips("sign", np.float32(1.0), np.float32(-1.0))
    assert (result["total"], result["indices"]) == (1, [[]])


# -- budgets and dtypes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "exceeds"), [(99, True), (100, False), (199, False), (200, False)])
def test_budget_rounds_down(rows: int, exceeds: bool) -> None:
    expected, actual, _, _ = planted_argmax(gap=1e-6)
    expected, actual = np.resize(expected, (rows, 10)), np.resize(actual, (rows, 10))
    expected[64:], actual[64:] = expected[0], expected[0]  # only the one planted row flips
    result = decision_flips("argmax @ 1%", expected, actual)
    assert (result["flips"], result["exceeds"]) == (1, exceeds)
    assert Decision.parse("argmax @ 1%").allowed_flips(rows) == rows // 100


def test_bfloat16_and_float16_inputs() -> None:
    expected = logits(32, 8).astype(ml_dtypes.bfloat16)
    actual = expected.copy()
    top = int(np.argmax(expected[5].astype(np.float64)))
    actual[5, top] = ml_dtypes.bfloat16(-100.0)
    result = decision_flips("argmax", expected, actual)
    assert (result["flips"], result["indices"]) == (1, [[5]])
    row = np.sort(expected[5].astype(np.float64))
    assert result["margins"] == [row[-1] - row[-2]]
    assert decision_flips("topk(3)", expected.astype(np.float16), actual.astype(np.float16))["flips"] == 1
    assert decision_flips("argmax", expected, expected.astype(np.float32))["flips"] == 0


def test_errors() -> None:
    with pytest.raises(DecisionError, match=r"shapes \(2, 3\) and \(3, 2\)"):
        decision_flips("argmax", np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(DecisionError, match="a 0-d array has none"):
        decision_flips("argmax", np.float64(1), np.float64(2))
    with pytest.raises(DecisionError, match=r"topk\(4\) needs more than 4 values along the last axis, got 4"):
        decision_flips("topk(4)", np.zeros((2, 4)), np.zeros((2, 4)))
    with pytest.raises(DecisionError, match="at least one value along the last axis"):
        decision_flips("argmax", np.zeros((2, 0)), np.zeros((2, 0)))
    with pytest.raises(DtypeError, match="expected is complex128"):
        decision_flips("sign", np.zeros(2, complex), np.zeros(2))
    with pytest.raises(DecisionError, match="does not broadcast"):
        decision_flips("argmax", logits(), logits(), tolerance_abs=np.ones(3))
    with pytest.raises(DecisionError, match="unknown rule"):
        decision_flips("argmin", np.zeros(2), np.zeros(2))


def test_empty_outputs_have_no_decisions() -> None:
    result = decision_flips("argmax @ 1%", np.zeros((0, 5)), np.zeros((0, 5)))
    assert (result["total"], result["flips"], result["exceeds"]) == (0, 0, False)
    assert decision_flips("sign", np.zeros(0), np.zeros(0))["total"] == 0


all_rules = st.sampled_from(["argmax", "topk(1)", "topk(3)", "threshold(0)", "threshold(-0.5)", "sign @ 1%"])
float_dtypes = st.sampled_from([np.float16, np.float32, np.float64, ml_dtypes.bfloat16])


@settings(max_examples=150, deadline=None)
@given(
    rule=all_rules,
    dtype=float_dtypes,
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=4, max_side=6),
    data=st.data(),
)
def test_identical_inputs_never_flip(rule: str, dtype: Any, shape: tuple[int, ...], data: st.DataObject) -> None:
    values = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(allow_subnormal=False, width=16)))
    array = values.astype(dtype)
    result = decision_flips(rule, array, array.copy(), tolerance_abs=1.0)
    assert (result["flips"], result["exceeds"], result["indices"], result["near_ties"]) == (0, False, [], 0)
    json.dumps(result, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=2, min_side=2, max_side=6),
    data=st.data(),
)
def test_argmax_and_topk_1_agree_on_nans_ties_and_zeros(shape: tuple[int, ...], data: st.DataObject) -> None:
    # argmax reads the floats directly, topk orders by integer keys: the two must agree.
    elements = st.sampled_from([float("nan"), -0.0, 0.0, 1.0, -1.0, float("inf"), float("-inf"), 2.0])
    expected = data.draw(hnp.arrays(np.float64, shape, elements=elements))
    actual = data.draw(hnp.arrays(np.float64, shape, elements=elements))
    argmax = decision_flips("argmax", expected, actual, tolerance_abs=0.5)
    assert decision_flips("topk(1)", expected, actual, tolerance_abs=0.5) == {**argmax, "rule": "topk(1)"}
