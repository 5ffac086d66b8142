"""ulp_distance and float_to_ordinal against brute-force counts, over random bit patterns."""

from __future__ import annotations

from fractions import Fraction
from functools import cache
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from detharness.compare import float_to_ordinal, ulp_distance
from detharness.compare.ulp import round_to_dtype
from detharness.errors import DtypeError

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
DTYPES: dict[str, np.dtype[Any]] = {
    "float16": np.dtype(np.float16),
    "bfloat16": BFLOAT16,
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}
BITS: dict[str, Any] = {"float16": np.uint16, "bfloat16": np.uint16, "float32": np.uint32, "float64": np.uint64}
WIDTH = {"float16": 16, "bfloat16": 16, "float32": 32, "float64": 64}
# (exponent bits, mantissa bits) of each format, to build special bit patterns.
LAYOUT = {"float16": (5, 10), "bfloat16": (8, 7), "float32": (8, 23), "float64": (11, 52)}
NAN_VS_NUMBER = 2**64 - 1


def special_patterns(name: str) -> list[int]:
    """Bit patterns hypothesis might take long to find: zeros, subnormals, extremes, NaN payloads."""
    exponent_bits, mantissa_bits = LAYOUT[name]
    sign = 1 << (exponent_bits + mantissa_bits)
    infinity = ((1 << exponent_bits) - 1) << mantissa_bits
    patterns = [
        0,  # +0
        1,  # smallest subnormal
        (1 << mantissa_bits) - 1,  # largest subnormal
        1 << mantissa_bits,  # smallest normal
        infinity - 1,  # largest finite
        infinity,  # +inf
        infinity | 1,  # a signalling NaN payload
        infinity | (1 << (mantissa_bits - 1)),  # the quiet NaN
        infinity | ((1 << mantissa_bits) - 1),  # NaN, all payload bits
    ]
    return patterns + [pattern | sign for pattern in patterns]


def bit_patterns(name: str) -> st.SearchStrategy[int]:
    return st.one_of(st.integers(0, 2 ** WIDTH[name] - 1), st.sampled_from(special_patterns(name)))


def from_bits(patterns: list[int], name: str) -> np.ndarray:
    return np.array(patterns, dtype=BITS[name]).view(DTYPES[name])


@cache
def rank_of_every_pattern(name: str) -> np.ndarray:
    """For a 16-bit format: each bit pattern's position among the format's distinct values.

    Brute force, sharing nothing with the code under test: sort every value the format has (as
    float64, NaNs left out, +0 and -0 one value) and look each pattern up by value.
    """
    with np.errstate(invalid="ignore"):  # casting signalling NaNs
        values = np.arange(2**16, dtype=np.uint16).view(DTYPES[name]).astype(np.float64)
    distinct = np.unique(values[~np.isnan(values)])  # unique merges -0.0 with 0.0
    ranks = np.searchsorted(distinct, values).astype(np.int64)
    ranks[np.isnan(values)] = -1
    return ranks


def count_between(first: int, second: int, name: str) -> int:
    """Representable values from one pattern to the other, by sign-magnitude arithmetic on ints.

    Written apart from the implementation's two's-complement ordinals: for the same sign the
    magnitudes differ by the count; across zero the two magnitudes add (+0 and -0 being one).
    """
    width = WIDTH[name]
    sign = 1 << (width - 1)
    first_negative, second_negative = bool(first & sign), bool(second & sign)
    first_magnitude, second_magnitude = first & (sign - 1), second & (sign - 1)
    if first_negative == second_negative:
        return abs(first_magnitude - second_magnitude)
    return first_magnitude + second_magnitude


def is_nan_pattern(pattern: int, name: str) -> bool:
    exponent_bits, mantissa_bits = LAYOUT[name]
    magnitude = pattern & ((1 << (exponent_bits + mantissa_bits)) - 1)
    return magnitude > ((1 << exponent_bits) - 1) << mantissa_bits


def expected_distance(first: int, second: int, name: str) -> int:
    first_nan, second_nan = is_nan_pattern(first, name), is_nan_pattern(second, name)
    if first_nan and second_nan:
        return 0
    if first_nan or second_nan:
        return NAN_VS_NUMBER
    return count_between(first, second, name)


@pytest.mark.parametrize("name", DTYPES)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_distance_matches_sign_magnitude_count(name: str, data: st.DataObject) -> None:
    pairs = data.draw(st.lists(st.tuples(bit_patterns(name), bit_patterns(name)), min_size=1, max_size=40))
    first = from_bits([pair[0] for pair in pairs], name)
    second = from_bits([pair[1] for pair in pairs], name)
    found = ulp_distance(first, second)
    assert found.dtype == np.uint64
    assert found.tolist() == [expected_distance(a, b, name) for a, b in pairs]
    assert ulp_distance(second, first).tolist() == found.tolist(), "symmetric"


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_16_bit_distance_matches_sorted_table_of_all_values(name: str, data: st.DataObject) -> None:
    patterns = data.draw(st.lists(bit_patterns(name), min_size=2, max_size=60))
    ranks = rank_of_every_pattern(name)
    values = from_bits(patterns, name)
    found = ulp_distance(values[:, None], values[None, :])
    for i, first in enumerate(patterns):
        for j, second in enumerate(patterns):
            if ranks[first] < 0 or ranks[second] < 0:
                continue
            assert found[i, j] == abs(int(ranks[first]) - int(ranks[second]))


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_16_bit_every_value_against_pivots(name: str) -> None:
    """Exhaustive over one side: all 65,536 patterns against a handful of pivots."""
    ranks = rank_of_every_pattern(name)
    every = np.arange(2**16, dtype=np.uint16).view(DTYPES[name])
    numbers = ranks >= 0
    for pivot in [*special_patterns(name), 0x3C00, 0xBC00, 0x1234, 0x8765]:
        found = ulp_distance(every, from_bits([pivot], name))
        if ranks[pivot] < 0:
            assert (found[numbers] == NAN_VS_NUMBER).all() and (found[~numbers] == 0).all()
        else:
            assert (found[numbers] == np.abs(ranks[numbers] - ranks[pivot]).astype(np.uint64)).all()
            assert (found[~numbers] == NAN_VS_NUMBER).all()


def nextafter(value: np.ndarray, toward: float) -> np.ndarray:
    """numpy's nextafter; ml_dtypes provides the bfloat16 loop."""
    with np.errstate(over="ignore"):  # stepping onto an infinity is intended
        return np.nextafter(value, np.array(toward, dtype=value.dtype))


@pytest.mark.parametrize("name", DTYPES)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_distance_matches_nextafter_steps(name: str, data: st.DataObject) -> None:
    start_bits = data.draw(bit_patterns(name).filter(lambda bits: not is_nan_pattern(bits, name)))
    steps = data.draw(st.integers(0, 40))
    toward = data.draw(st.sampled_from([np.inf, -np.inf]))
    start = from_bits([start_bits], name)
    current = start
    taken = 0
    for _ in range(steps):
        following = nextafter(current, toward)
        if following[0] == current[0] and np.signbit(following[0]) == np.signbit(current[0]):
            break  # an infinity: no further value that way
        if following[0] == 0 and current[0] == 0:
            current = following  # -0 to +0 (or back) is not a step: they are one value
            continue
        current = following
        taken += 1
    assert ulp_distance(start, current).tolist() == [taken]
    assert ulp_distance(current, start).tolist() == [taken]


@pytest.mark.parametrize("name", DTYPES)
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_a_value_and_its_neighbour_are_one_apart(name: str, data: st.DataObject) -> None:
    bits = data.draw(
        bit_patterns(name).filter(lambda b: not is_nan_pattern(b, name) and b != special_patterns(name)[5])
    )
    value = from_bits([bits], name)
    above = nextafter(value, np.inf)
    if value[0] == 0:  # from either zero the next value up is the smallest subnormal: 1 apart
        assert above[0] > 0
    assert ulp_distance(value, above).tolist() == [1]


@pytest.mark.parametrize("name", DTYPES)
def test_documented_special_cases(name: str) -> None:
    dtype = DTYPES[name]
    zeros = np.array([0.0, -0.0], dtype=dtype)
    assert ulp_distance(zeros[0], zeros[1]).tolist() == 0
    largest = from_bits([special_patterns(name)[4]], name)
    assert ulp_distance(largest, np.array([np.inf], dtype=dtype)).tolist() == [1]
    assert ulp_distance(-largest, np.array([-np.inf], dtype=dtype)).tolist() == [1]
    nans = from_bits(special_patterns(name)[6:9], name)
    assert ulp_distance(nans, nans[::-1]).tolist() == [0, 0, 0]
    assert ulp_distance(nans, np.array([1.0, 0.0, np.inf], dtype=dtype)).tolist() == [NAN_VS_NUMBER] * 3
    tiny = from_bits([1, 1 | (1 << (WIDTH[name] - 1))], name)  # +- smallest subnormal
    assert ulp_distance(tiny[0], tiny[1]).tolist() == 2
    assert ulp_distance(tiny, zeros).tolist() == [1, 1]


def test_broadcasting_follows_numpy() -> None:
    column = np.array([[1.0], [2.0]], dtype=np.float32)
    row = np.array([1.0, np.nextafter(np.float32(1.0), np.float32(2.0))], dtype=np.float32)
    found = ulp_distance(column, row)
    assert found.shape == (2, 2)
    assert found[0].tolist() == [0, 1]
    assert ulp_distance(np.float32(1.0), np.float32(1.0)).shape == ()


def test_byte_swapped_input_reads_as_its_values() -> None:
    values = np.array([1.0, -2.5, 3e-40], dtype=np.float32)
    swapped = values.astype(">f4") if np.little_endian else values.astype("<f4")
    assert ulp_distance(values, swapped).tolist() == [0, 0, 0]
    assert float_to_ordinal(swapped).tolist() == float_to_ordinal(values).tolist()


def test_mixed_dtypes_are_an_error_naming_both() -> None:
    with pytest.raises(DtypeError) as raised:
        ulp_distance(np.zeros(2, np.float32), np.zeros(2, np.float64))
    assert str(raised.value) == (
        "ulp_distance needs two arrays of one float dtype, got float32 and float64; cast one to the other "
        "first (compare() judges mixed dtypes by rounding the reference to the candidate's dtype)"
    )


@pytest.mark.parametrize("value", [np.zeros(2, np.int32), np.zeros(2, bool), np.zeros(2, np.complex64)], ids=str)
def test_non_float_input_is_an_error(value: np.ndarray) -> None:
    with pytest.raises(
        DtypeError, match="ulp_distance needs float16, bfloat16, float32 or float64 arrays; the first argument is"
    ):
        ulp_distance(value, value)


@pytest.mark.parametrize("name", DTYPES)
def test_ordinals_are_monotone_and_dense(name: str) -> None:
    values = np.array([-np.inf, -1.0, -0.0, 0.0, 1.0, np.inf], dtype=DTYPES[name])
    ordinals = float_to_ordinal(values)
    assert ordinals.dtype == np.int64
    assert ordinals[2] == ordinals[3] == 0
    assert (np.diff(ordinals) >= 0).all()
    assert ordinals[-1] == -ordinals[0]


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=True, width=64))
@example(1 + 2**-8 + 2**-30)  # ml_dtypes' own cast rounds this twice, to 1
@example(-(1 + 2**-8 + 2**-30))
@example(1 + 2**-8)  # an exact tie: to the even neighbour, 1
@example(1 + 3 * 2**-8)  # an exact tie: to the even neighbour, 1 + 2**-6
@example(3.4e38)
@example(2.0**-140)
def test_rounding_to_bfloat16_is_correct(value: float) -> None:
    """The nearest bfloat16 (ties to the even pattern), found by exact search over all values."""
    found = float(round_to_dtype(np.array([value]), BFLOAT16).astype(np.float64)[0])
    patterns = np.arange(2**16, dtype=np.uint16)
    with np.errstate(invalid="ignore"):
        every = patterns.view(BFLOAT16).astype(np.float64)
    finite = np.isfinite(every)
    values, bits = every[finite], patterns[finite]
    largest = float(values.max())
    if abs(value) >= largest + 2.0**119:  # at or past halfway from the largest to 2**128
        assert found == np.copysign(np.inf, value)
        return
    order = np.argsort(values, kind="stable")
    position = int(np.searchsorted(values[order], value))
    around = order[max(position - 2, 0) : position + 2]  # the neighbours on either side
    distances = {int(i): abs(Fraction(float(values[i])) - Fraction(value)) for i in around}
    best = min(distances.values())
    nearest = [(float(values[i]), int(bits[i])) for i, d in distances.items() if d == best]
    if len({v for v, _ in nearest}) > 1:  # a tie: the neighbour whose last bit is even
        nearest = [(v, b) for v, b in nearest if b % 2 == 0]
    assert found == nearest[0][0]
