"""close() must let two NaNs agree, as ulp() and scaled() do: a NaN reference has no relative budget."""

from __future__ import annotations

import numpy as np
import pytest

from detharness.compare import compare


@pytest.mark.parametrize("actual_dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("tolerance", ["close(2e-3, 1e-5)", "close(0, 0)", "ulp(0)", "scaled(1e-6)"])
def test_two_nans_agree_under_every_rule(actual_dtype: str, tolerance: str) -> None:
    expected = np.array([np.nan, 1.0, -2.5])
    actual = expected.astype(actual_dtype)
    verdict = compare(expected, actual, tolerance)
    assert verdict.status == ("identical" if actual_dtype == "float64" else "close"), verdict.message


def test_a_nan_against_a_number_is_still_a_mismatch() -> None:
    verdict = compare(np.array([np.nan, 1.0], dtype=np.float32), np.array([0.0, 1.0], dtype=np.float32), "close(1, 1)")
    assert verdict.status == "mismatch"


def test_close_still_fails_beyond_its_budget_beside_a_nan() -> None:
    verdict = compare(np.array([np.nan, 1.0], dtype=np.float32), np.array([np.nan, 1.1], dtype=np.float32),
                      "close(1e-3, 0)")
    assert verdict.status == "diverged"
    assert verdict.mismatched == 1
