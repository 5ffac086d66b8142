"""psi, wasserstein_scaled, jsd_bits and shift: distribution shift between two samples."""

from __future__ import annotations

import math
import sys

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from detharness.compare.shift import (
    _jensenshannon_base2,
    _wasserstein_numpy,
    is_categorical,
    jsd_bits,
    psi,
    psi_reading,
    shift,
    shift_text,
    wasserstein_scaled,
)

RNG = np.random.default_rng(4)
REFERENCE = RNG.standard_normal(20_000)
SAME_LAW = RNG.standard_normal(20_000)

try:
    import scipy  # noqa: F401

    HAVE_SCIPY = True
except ImportError:
    HAVE_SCIPY = False
needs_scipy = pytest.mark.skipif(not HAVE_SCIPY, reason="scipy is not installed")


@pytest.fixture
def no_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide scipy: nothing here needs it."""
    for name in ("scipy", "scipy.stats", "scipy.spatial", "scipy.spatial.distance"):
        monkeypatch.setitem(sys.modules, name, None)


def test_identical_samples_give_zero() -> None:
    assert shift(REFERENCE, REFERENCE) == {"psi": 0.0, "wasserstein": 0.0, "jsd": None}
    ids = RNG.integers(0, 7, 500)
    assert shift(ids, ids) == {"psi": None, "wasserstein": None, "jsd": 0.0}
    assert shift_text(shift(REFERENCE, REFERENCE)) == "PSI 0 (stable), Wasserstein 0 std"


def test_same_law_is_stable() -> None:
    result = shift(REFERENCE, SAME_LAW)
    assert result["psi"] is not None and result["psi"] < 0.01
    assert result["wasserstein"] is not None and result["wasserstein"] < 0.03
    assert psi_reading(result["psi"]) == "stable"


def test_mean_shift() -> None:
    # Half a std: the continuous PSI (the symmetric KL divergence) of N(0.5, 1) against N(0, 1) is
    # 0.25 and binning on deciles only lowers it, so the reading is moderate; one std is major.
    half = shift(REFERENCE, SAME_LAW + 0.5)
    assert half["psi"] == pytest.approx(0.23, abs=0.02)
    assert psi_reading(half["psi"]) == "moderate"
    assert half["wasserstein"] == pytest.approx(0.5, abs=0.03)
    one = shift(REFERENCE, SAME_LAW + 1.0)
    assert psi_reading(one["psi"]) == "major"
    assert one["wasserstein"] == pytest.approx(1.0, abs=0.03)
    assert shift_text(one) == f"PSI {one['psi']:.2g} (major shift), Wasserstein {one['wasserstein']:.2g} std"


def test_rescaled_sample() -> None:
    # y = 2x: the quantile coupling moves each value by |x|, so W = E|x| = sqrt(2/pi) std.
    result = shift(REFERENCE, 2 * SAME_LAW)
    assert result["wasserstein"] == pytest.approx(math.sqrt(2 / math.pi), abs=0.03)
    assert result["psi"] is not None and psi_reading(result["psi"]) == "major"
    scaled = wasserstein_scaled(3 * REFERENCE, 6 * SAME_LAW)  # scale-free
    assert scaled == pytest.approx(result["wasserstein"], rel=1e-9)


def test_psi_known_value() -> None:
    expected = np.arange(10.0)  # deciles at 0.9, 1.8, ...: one value per bin
    actual = np.zeros(10)  # all in the first bin
    e, a = np.full(10, 0.1), np.array([1.0] + [1e-4] * 9)
    assert psi(expected, actual) == pytest.approx(float(np.sum((a - e) * np.log(a / e))))
    assert psi(expected, actual, floor=1e-2) < psi(expected, actual)


def test_psi_duplicate_edges_merge() -> None:
    expected = np.array([0.0] * 80 + [1.0] * 10 + [2.0] * 10)  # deciles 0 (x8), 1, 2 -> edges [0, 1, 2]
    assert psi(expected, expected) == 0.0
    actual = np.array([0.0] * 40 + [1.0] * 30 + [2.0] * 30)
    e, a = np.array([1e-4, 0.8, 0.1, 0.1]), np.array([1e-4, 0.4, 0.3, 0.3])
    assert psi(expected, actual) == pytest.approx(float(np.sum((a - e) * np.log(a / e))))
    constant = np.full(50, 3.0)  # one edge: values below it, and values at or above it
    assert psi(constant, constant - 1) > 1
    assert psi(constant, constant + 1) == 0.0  # at or above the only edge: the same bin


def test_psi_arguments() -> None:
    with pytest.raises(ValueError, match="bins"):
        psi(REFERENCE, REFERENCE, bins=1)
    with pytest.raises(ValueError, match="floor"):
        psi(REFERENCE, REFERENCE, floor=0)
    with pytest.raises(ValueError, match="no finite value"):
        psi(REFERENCE, [np.nan])
    assert psi(REFERENCE, SAME_LAW + 1, bins=20) > 0.25


@pytest.mark.parametrize(
    ("value", "reading"),
    [(0.0, "stable"), (0.0999, "stable"), (0.1, "moderate"), (0.25, "moderate"), (0.2501, "major")],
)
def test_psi_reading(value: float, reading: str) -> None:
    assert psi_reading(value) == reading


def test_wasserstein_constant_reference() -> None:
    constant = np.full(10, 2.0)
    assert wasserstein_scaled(constant, constant) == 0.0
    assert wasserstein_scaled(constant, constant + 1) == math.inf
    assert (
        shift_text({"psi": None, "wasserstein": math.inf, "jsd": None}) == "Wasserstein inf (the reference is constant)"
    )


def test_wasserstein_unequal_sizes_known_value() -> None:
    # F_u - F_v on [0, 1): 1/2 - 0, on [1, 2): 1 - 1/3, on [2, 3): 1 - 2/3 -> 1/2 + 2/3 + 1/3 = 1.5
    u, v = np.array([0.0, 1.0]), np.array([1.0, 2.0, 3.0])
    assert _wasserstein_numpy(u, v) == pytest.approx(1.5)
    assert wasserstein_scaled(u, v) == pytest.approx(1.5 / 0.5)


def test_the_measures_run_without_scipy(no_scipy: None) -> None:
    with pytest.raises(ImportError):
        import scipy.stats  # noqa: F401
    result = shift(REFERENCE, SAME_LAW + 0.5)
    assert result["wasserstein"] == pytest.approx(0.5, abs=0.03)
    assert jsd_bits([0, 0], [1, 1]) == 1.0


@needs_scipy
@pytest.mark.parametrize("seed", range(5))
def test_wasserstein_fallback_equals_scipy(seed: int) -> None:
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(seed)
    u = rng.standard_normal(rng.integers(1, 400)) * rng.uniform(0.1, 10)
    v = rng.standard_t(3, rng.integers(1, 400)) + rng.uniform(-2, 2)
    v[: v.size // 4] = np.round(v[: v.size // 4], 1)  # ties too
    assert _wasserstein_numpy(u, v) == float(wasserstein_distance(u, v))
    assert _wasserstein_numpy(v, u) == float(wasserstein_distance(v, u))


@given(seed=st.integers(0, 2**32 - 1), size=st.integers(1, 3000), ties=st.booleans(), scale=st.floats(1e-6, 1e6))
@settings(max_examples=80, deadline=None)
def test_equal_sizes_take_the_order_statistics_and_agree_with_the_cdf_integral(
        seed: int, size: int, ties: bool, scale: float) -> None:
    """Two samples of one size: the mean gap between their sorted values is the integral of
    |F_u - F_v| (scipy's formula, transcribed step for step in _wasserstein_numpy) up to rounding."""
    from detharness.compare.shift import _wasserstein

    rng = np.random.default_rng(seed)
    u = rng.standard_normal(size) * scale
    v = (u + rng.standard_normal(size) * scale * rng.uniform(1e-9, 2)) if size % 2 else rng.standard_t(3, size) * scale
    if ties:
        u, v = np.round(u / scale, 1) * scale, np.round(v / scale, 1) * scale
    fast, integral = _wasserstein(u, v), _wasserstein_numpy(u, v)
    assert fast == pytest.approx(integral, rel=1e-12, abs=1e-15 * scale)
    assert _wasserstein(v, u) == fast


@given(seed=st.integers(0, 2**32 - 1), size=st.integers(1, 500), holes=st.booleans())
@settings(max_examples=60, deadline=None)
def test_a_reference_sample_gives_the_figures_its_array_gives_bit_for_bit(seed: int, size: int, holes: bool) -> None:
    """One ReferenceSample held against several candidates (same size, another size, another dtype,
    with NaN and infinities) gives exactly what the raw reference array gives each time."""
    from detharness.compare.shift import ReferenceSample

    rng = np.random.default_rng(seed)
    expected = rng.standard_normal(size)
    if holes and size > 2:
        expected[0], expected[-1] = np.nan, np.inf
    reference = ReferenceSample(expected)
    candidates = [expected + rng.standard_normal(size) * 1e-3, rng.standard_normal(size + 7) + 0.2,
                  expected.astype(np.float32), expected.astype(ml_dtypes.bfloat16)]
    for actual in candidates:
        assert shift(reference, actual) == shift(expected, actual)
        if np.isfinite(expected).any():
            assert psi(reference, actual) == psi(expected, actual)
            assert wasserstein_scaled(reference, actual) == wasserstein_scaled(expected, actual)


def test_the_figures_are_the_same_bits_with_and_without_scipy_and_never_import_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """shift never imports scipy (a run's checks would pay 0.2-0.3 s for it) and gives the same
    figures where it is missing: equal sizes, unequal sizes and categories."""
    ids, other = np.arange(3000) % 7, (np.arange(2000) * 3) % 11
    pairs = [(REFERENCE, SAME_LAW + 0.5), (REFERENCE, SAME_LAW[:1234] * 2), (ids, other)]
    monkeypatch.delitem(sys.modules, "scipy.stats", raising=False)
    monkeypatch.delitem(sys.modules, "scipy.spatial.distance", raising=False)
    found = [shift(e, a) for e, a in pairs]
    assert "scipy.stats" not in sys.modules and "scipy.spatial.distance" not in sys.modules
    for name in ("scipy", "scipy.stats", "scipy.spatial", "scipy.spatial.distance"):
        monkeypatch.setitem(sys.modules, name, None)
    assert [shift(e, a) for e, a in pairs] == found


@needs_scipy
def test_jensenshannon_fallback_equals_scipy() -> None:
    from scipy.spatial.distance import jensenshannon

    for seed in range(40):
        rng = np.random.default_rng(seed)
        size = int(rng.integers(2, 200))
        p = rng.integers(0, 100, size).astype(np.float64)
        q = rng.integers(0, 100, size).astype(np.float64)
        p[0] += 1
        q[-1] += 1
        expected = float(jensenshannon(p, q, base=2.0))
        # Bit for bit against scipy 1.17's rel_entr; other versions' may differ in the last bits.
        assert _jensenshannon_base2(p, q) == pytest.approx(expected, rel=1e-14, abs=1e-15)


def test_jsd_known_values() -> None:
    assert jsd_bits([0, 0, 0], [1, 1]) == pytest.approx(1.0)  # p = [1, 0], q = [0, 1]
    assert jsd_bits([3, 1, 2], [2, 3, 1]) == 0.0  # the same frequencies in another order
    # p = [1, 0], q = [1/2, 1/2]: JSD = 1 - H(3/4, 1/4)/2 ... in bits
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert jsd_bits([0, 0], [0, 1]) == pytest.approx(h - 0.5)
    assert jsd_bits(np.array(["a", "b"]), np.array(["b", "c"])) == pytest.approx(0.5)


def test_jsd_one_hot() -> None:
    eye = np.eye(3, dtype=np.int64)
    expected = eye[[0, 0, 1, 2]]  # counts [2, 1, 1]
    actual = eye[[0, 1, 1, 2]]  # counts [1, 2, 1]
    counts = jsd_bits([0, 0, 1, 2], [0, 1, 1, 2])
    assert jsd_bits(expected, actual) == pytest.approx(counts)
    assert jsd_bits(expected, eye[[2, 2]]) == pytest.approx(jsd_bits([0, 0, 1, 2], [2, 2]))
    # An all-zero row (an unknown value) is a category of its own.
    unknown = np.vstack([eye[[0, 0, 1]], np.zeros((1, 3), dtype=np.int64)])
    assert jsd_bits(expected, unknown) == pytest.approx(jsd_bits([0, 0, 1, 2], [0, 0, 1, 3]))
    # bools and floats are read as one-hot too
    assert jsd_bits(expected.astype(bool), actual.astype(np.float32)) == pytest.approx(counts)
    # Multi-hot rows are not one-hot: their 0s and 1s are counted as values.
    multi = np.array([[1, 1, 0], [0, 1, 0]])
    assert jsd_bits(multi, multi[::-1]) == 0.0


def test_jsd_needs_values() -> None:
    with pytest.raises(ValueError, match="a value on each side"):
        jsd_bits(np.zeros(0, dtype=np.int64), [1])


def test_is_categorical() -> None:
    assert is_categorical(np.array([1, 2], dtype=np.int32))
    assert is_categorical(np.array([True]))
    assert is_categorical(np.array(["x"]))
    assert is_categorical(np.eye(2, dtype=np.uint8))
    assert not is_categorical(np.eye(2, dtype=np.float32))
    assert not is_categorical(np.zeros(2, dtype=ml_dtypes.bfloat16))


def test_shift_kinds() -> None:
    ids = RNG.integers(0, 5, 1000)
    moved = shift(ids, ids + 1)
    assert moved["psi"] is None and moved["wasserstein"] is None
    assert moved["jsd"] is not None and 0 < moved["jsd"] < 1
    assert shift_text(moved) == f"JSD {moved['jsd']:.2g} bits"
    assert shift(np.zeros(3, dtype=np.complex64), np.zeros(3)) == {"psi": None, "wasserstein": None, "jsd": None}
    # the reference's dtype decides: integer-valued floats against ints are numeric
    numeric = shift(ids.astype(np.float64), ids)
    assert numeric == {"psi": 0.0, "wasserstein": 0.0, "jsd": None}


def test_shift_bfloat16_and_non_finite() -> None:
    expected = REFERENCE[:2000].astype(ml_dtypes.bfloat16)
    actual = np.concatenate([REFERENCE[:2000], [np.nan, np.inf, -np.inf]]).astype(np.float32)
    result = shift(expected, actual)
    assert result["psi"] is not None and result["psi"] < 0.01
    assert result["wasserstein"] is not None and result["wasserstein"] < 0.01
    assert shift(np.array([np.nan, 1.0]), np.array([np.nan, 1.0])) == {"psi": 0.0, "wasserstein": 0.0, "jsd": None}
    assert shift(np.array([np.nan]), np.array([1.0])) == {"psi": None, "wasserstein": None, "jsd": None}
    assert shift_text(shift(np.array([np.nan]), np.array([1.0]))) == "no shift measured"
    assert shift_text(None) == "no shift measured"


def test_shapes_are_flattened() -> None:
    assert shift(REFERENCE.reshape(100, 200), REFERENCE) == {"psi": 0.0, "wasserstein": 0.0, "jsd": None}


samples = hnp.arrays(
    np.float64, st.integers(1, 60), elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
)


@settings(max_examples=80, deadline=None)
@given(expected=samples, actual=samples)
def test_psi_is_never_negative(expected: np.ndarray, actual: np.ndarray) -> None:
    assert psi(expected, actual) >= 0
    assert psi(expected, expected) == 0


@settings(max_examples=80, deadline=None)
@given(expected=samples, actual=samples)
def test_wasserstein_symmetric_with_equal_std(expected: np.ndarray, actual: np.ndarray) -> None:
    # -x has exactly the std of x (the same sums, negated), so the scaled distance is symmetric.
    mirrored = -expected
    assert wasserstein_scaled(expected, mirrored) == wasserstein_scaled(mirrored, expected)
    # In general the distance is symmetric and only the scale (the reference's std) differs.
    forward, backward = wasserstein_scaled(expected, actual), wasserstein_scaled(actual, expected)
    assert forward >= 0 and backward >= 0
    if 0 < forward < math.inf and 0 < backward < math.inf:
        assert forward * np.std(expected) == pytest.approx(backward * np.std(actual), rel=1e-12)
