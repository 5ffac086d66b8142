"""accuracy and reading_text: errors against a float64 oracle, their ratio and its reading."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from detharness.compare.accuracy import accuracy, reading_text

RNG = np.random.default_rng(11)
LOGITS = RNG.standard_normal((64, 128)).astype(np.float32) * 4


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def softmax_reordered(x: np.ndarray) -> np.ndarray:
    """The same formula in another order: the sum reversed, a multiply by the reciprocal.

    (A sequential sum, ``np.cumsum``, is not the same formula's best: over 128 terms it reads about
    2x further from float64 than numpy's pairwise sum, on the factor's edge.)
    """
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    total = shifted[..., ::-1].sum(axis=-1, keepdims=True)
    return shifted * (np.float32(1) / total)


def layer_norm(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + x.dtype.type(eps))


def layer_norm_one_pass(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Layer norm with E[x^2] - E[x]^2: the same maths, float32 throughout, another order."""
    mean = x.mean(axis=-1, keepdims=True)
    var = (x * x).mean(axis=-1, keepdims=True) - mean * mean
    return (x - mean) * (np.float32(1) / np.sqrt(var + np.float32(eps)))


def planted(result: np.ndarray) -> np.ndarray:
    """A float32 result plus noise 50x the float32 rounding (50 ULP, random sign)."""
    sign = np.where(RNG.random(result.shape) < 0.5, -1, 1).astype(np.float32)
    return (result + sign * 50 * np.spacing(result)).astype(np.float32)


@pytest.mark.parametrize("formula", [softmax, layer_norm])
def test_planted_error_50x_rounding_reads_candidate_worse(formula) -> None:
    oracle = formula(LOGITS.astype(np.float64))
    baseline = formula(LOGITS)
    acc = accuracy(oracle, planted(baseline), baseline)
    assert acc["reading"] == "candidate-worse"
    assert acc["ratio"] > 10
    assert acc["metric"] == "rms"
    assert acc["candidate_error"] > acc["baseline_error"] > 0
    assert reading_text(acc, "planted", "numpy").startswith(
        f"planted is {acc['ratio']:.3g}x further from float64 than numpy"
    )


@pytest.mark.parametrize(
    ("formula", "other"), [(softmax, softmax_reordered), (layer_norm, layer_norm_one_pass), (softmax, softmax)]
)
def test_plain_float32_reads_rounding_noise(formula, other) -> None:
    oracle = formula(LOGITS.astype(np.float64))
    acc = accuracy(oracle, other(LOGITS), formula(LOGITS))
    assert acc["reading"] == "rounding-noise"
    assert acc["ratio"] == pytest.approx(1, abs=0.5)
    text = reading_text(acc, "torch", "numpy")
    assert text == f"both rounding noise: torch is {acc['ratio']:.3g}x as far from float64 as numpy"


def test_planted_baseline_reads_baseline_worse() -> None:
    oracle = softmax(LOGITS.astype(np.float64))
    candidate = softmax(LOGITS)
    acc = accuracy(oracle, candidate, planted(candidate))
    assert acc["reading"] == "baseline-worse"
    assert acc["ratio"] < 0.1
    assert reading_text(acc, "cuda", "cpu") == f"cpu is {1 / acc['ratio']:.3g}x further from float64 than cuda"


def test_both_errors_zero_give_ratio_one() -> None:
    x = np.array([1.0, 2.0, 3.0])
    acc = accuracy(x, x.astype(np.float32), x.astype(np.float16))
    assert acc == {
        "metric": "rms",
        "candidate_error": 0.0,
        "baseline_error": 0.0,
        "ratio": 1.0,
        "reading": "rounding-noise",
    }
    assert reading_text(acc, "a", "b") == "both equal float64: a and b have no error"


def test_only_baseline_zero_gives_inf() -> None:
    x = np.array([1.0, 2.0, 3.0])
    acc = accuracy(x, x + np.array([0, 0, 0.5]), x)
    assert acc["ratio"] == math.inf
    assert acc["reading"] == "candidate-worse"
    assert acc["candidate_error"] == pytest.approx(math.sqrt(0.25 / 3))
    assert reading_text(acc, "a", "b") == "b equals float64 and a is 0.289 from it (rms)"


def test_only_candidate_zero_gives_zero() -> None:
    x = np.array([1.0, 2.0, 3.0])
    acc = accuracy(x, x, x + 1)
    assert acc["ratio"] == 0.0
    assert acc["reading"] == "baseline-worse"
    assert reading_text(acc, "a", "b") == "a equals float64 and b is 1 from it (rms)"


def test_max_scaled() -> None:
    oracle = np.array([-4.0, 1.0, 2.0])
    acc = accuracy(oracle, oracle + np.array([0, 0.4, 0]), oracle + np.array([0, 0, -0.1]), metric="max_scaled")
    assert acc["metric"] == "max_scaled"
    assert acc["candidate_error"] == pytest.approx(0.1)
    assert acc["baseline_error"] == pytest.approx(0.025)
    assert acc["ratio"] == pytest.approx(4)
    assert acc["reading"] == "candidate-worse"


def test_max_scaled_with_zero_oracle_is_absolute() -> None:
    zero = np.zeros(3)
    acc = accuracy(zero, [0.0, 0.3, 0.0], [0.0, 0.0, -0.2], metric="max_scaled")
    assert acc["candidate_error"] == pytest.approx(0.3)
    assert acc["baseline_error"] == pytest.approx(0.2)
    assert acc["reading"] == "rounding-noise"
    both_zero = accuracy(zero, zero, zero, metric="max_scaled")
    assert (both_zero["candidate_error"], both_zero["ratio"]) == (0.0, 1.0)


def test_rms_value() -> None:
    acc = accuracy([0.0, 0.0], [3.0, 4.0], [1.0, 1.0])
    assert acc["candidate_error"] == pytest.approx(math.sqrt(12.5))
    assert acc["baseline_error"] == 1.0


def test_max_scaled_with_a_subnormal_oracle() -> None:
    acc = accuracy([2.2e-313], [1.0], [0.5], metric="max_scaled")
    assert acc["candidate_error"] == acc["baseline_error"] == math.inf
    assert acc["ratio"] == pytest.approx(2)
    assert acc["reading"] == "rounding-noise"


def test_rms_does_not_overflow() -> None:
    acc = accuracy([0.0, 0.0], [1e200, 1e200], [1e199, 1e199])
    assert acc["candidate_error"] == pytest.approx(1e200)
    assert acc["ratio"] == pytest.approx(10)


def test_bfloat16() -> None:
    bf16 = np.dtype(ml_dtypes.bfloat16)
    x = LOGITS[:4]
    oracle = softmax(x.astype(np.float64))
    baseline = softmax(x).astype(bf16)
    candidate = (softmax(x.astype(bf16).astype(np.float32)) * 1.02).astype(bf16)
    acc = accuracy(oracle, candidate, baseline)
    assert acc["reading"] == "candidate-worse"
    assert isinstance(acc["candidate_error"], float)
    same = accuracy(oracle, baseline, baseline)
    assert same["ratio"] == 1.0


def test_non_finite_elements_are_left_out() -> None:
    oracle = np.array([1.0, np.nan, 3.0, 4.0])
    candidate = np.array([1.5, 2.0, np.inf, 4.0])
    baseline = np.array([1.25, 2.0, 3.0, 4.0])
    acc = accuracy(oracle, candidate, baseline)  # measured on elements 0 and 3 only
    assert acc["candidate_error"] == pytest.approx(math.sqrt(0.25 / 2))
    assert acc["ratio"] == pytest.approx(2)


def test_no_finite_element_gives_none() -> None:
    nan = np.full(2, np.nan)
    acc = accuracy(nan, [1.0, 2.0], [1.0, 2.0])
    assert acc == {"metric": "rms", "candidate_error": None, "baseline_error": None, "ratio": None, "reading": None}
    assert "not measured" in reading_text(acc, "a", "b")
    assert accuracy(np.zeros(0), np.zeros(0), np.zeros(0))["reading"] is None


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="one shape"):
        accuracy(np.zeros(3), np.zeros(3), np.zeros((3, 1)))


@pytest.mark.parametrize("factor", [1, 0.5, -2, math.nan])
def test_factor_must_exceed_one(factor: float) -> None:
    with pytest.raises(ValueError, match="factor"):
        accuracy(np.zeros(1), np.zeros(1), np.zeros(1), factor=factor)


def test_unknown_metric() -> None:
    with pytest.raises(ValueError, match="metric"):
        accuracy(np.zeros(1), np.zeros(1), np.zeros(1), metric="mae")


def test_factor_sets_the_band() -> None:
    oracle = np.zeros(4)
    acc = accuracy(oracle, np.full(4, 3.0), np.ones(4), factor=4)
    assert (acc["ratio"], acc["reading"]) == (3.0, "rounding-noise")
    assert accuracy(oracle, np.full(4, 3.0), np.ones(4))["reading"] == "candidate-worse"
    assert accuracy(oracle, np.full(4, 2.0), np.ones(4))["reading"] == "rounding-noise"  # the band is closed


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(
    data=hnp.arrays(np.float64, st.integers(1, 20), elements=finite).flatmap(
        lambda oracle: st.tuples(
            st.just(oracle),
            hnp.arrays(np.float64, oracle.shape, elements=finite),
            hnp.arrays(np.float64, oracle.shape, elements=finite),
        )
    ),
    metric=st.sampled_from(["rms", "max_scaled"]),
)
def test_ratio_is_antisymmetric(data: tuple[np.ndarray, np.ndarray, np.ndarray], metric: str) -> None:
    oracle, a, b = data
    forward = accuracy(oracle, a, b, metric=metric)
    backward = accuracy(oracle, b, a, metric=metric)
    if 0 < forward["ratio"] < math.inf and 0 < backward["ratio"] < math.inf:  # the ratio can overflow
        assert forward["ratio"] == pytest.approx(1 / backward["ratio"], rel=1e-12)
        on_the_edge = any(math.isclose(forward["ratio"], edge, rel_tol=1e-12) for edge in (2, 0.5))
        if not on_the_edge:
            mirror = {"candidate-worse": "baseline-worse", "baseline-worse": "candidate-worse"}
            assert backward["reading"] == mirror.get(forward["reading"], forward["reading"])
