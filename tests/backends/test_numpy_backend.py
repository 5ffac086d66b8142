"""The numpy backend: inputs handed over without a copy, read-only, every dtype."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from detharness.backends import VariantSpec, get_backend
from detharness.dtypes import ALL_DTYPES


@pytest.mark.parametrize("name", ALL_DTYPES)
def test_round_trip_is_bit_exact_and_copies_nothing(name: str, sample: Callable[..., np.ndarray]) -> None:
    numpy = get_backend("numpy")
    array = sample(name)
    native = numpy.to_native(array, "cpu")
    assert np.shares_memory(native, array)
    back = numpy.to_numpy(native)
    assert back.dtype == array.dtype
    assert back.tobytes() == array.tobytes()


def test_inputs_are_read_only_so_in_place_edits_fail_loudly() -> None:
    numpy = get_backend("numpy")
    array = np.ones(3, dtype="float32")
    native = numpy.to_native(array, "cpu")
    with pytest.raises(ValueError, match="read-only"):
        native -= 1
    assert array.flags.writeable


def test_plain_function_runs_and_its_outputs_are_named() -> None:
    numpy = get_backend("numpy")
    call = numpy.prepare(lambda x: {"y": x * 2}, VariantSpec("cpu", "float32", "eager"))
    out, _ = numpy.run(call, [numpy.to_native(np.ones(2, "float32"))], device="cpu", seed=0)
    assert numpy.outputs_to_numpy(out)["y"].tolist() == [2.0, 2.0]
    assert numpy.run_info() == {}
    assert numpy.apply_switches(deterministic=True) == {}
    assert set(numpy.fingerprint()) == {"numpy.version", "ml_dtypes.version"}
