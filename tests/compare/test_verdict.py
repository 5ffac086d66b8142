"""Status order, Verdict truthiness, JSON form, and the message helpers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from detharness.compare import Status, Verdict, worst
from detharness.compare.verdict import format_value, headline, round_up, share, table


def test_statuses_are_strings_in_order_of_severity() -> None:
    order = ["identical", "close", "known", "skipped", "missing", "flipped", "diverged", "mismatch", "error"]
    assert [status.value for status in Status] == order
    assert [status.severity for status in Status] == list(range(9))
    assert Status.CLOSE == "close"
    assert str(Status.DIVERGED) == "diverged"
    assert f"{Status.ERROR}" == "error"
    assert json.dumps({"status": Status.MISMATCH}) == '{"status": "mismatch"}'


def test_only_identical_and_close_pass() -> None:
    assert [status.value for status in Status if status.passed] == ["identical", "close"]


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([], Status.IDENTICAL),
        (["close", "identical"], Status.CLOSE),
        ([Status.KNOWN, "close"], Status.KNOWN),
        (["skipped", "missing", "known"], Status.MISSING),
        (["diverged", "mismatch", "close"], Status.MISMATCH),
        (["error", "mismatch"], Status.ERROR),
    ],
)
def test_worst(statuses: list[str], expected: Status) -> None:
    assert worst(statuses) is expected


def test_verdict_is_truthy_when_it_passes() -> None:
    assert Verdict(Status.IDENTICAL)
    assert Verdict("close")
    assert not Verdict(Status.KNOWN)
    assert not Verdict(Status.ERROR, "worker crashed: SIGSEGV", output="y")
    assert Verdict("close").status is Status.CLOSE


def test_to_json_writes_non_finite_numbers_as_strings_and_numpy_as_python() -> None:
    verdict = Verdict(
        Status.MISMATCH,
        message="m",
        tolerance="ulp(4)",
        total=3,
        mismatched=1,
        max_ulp=np.uint64(5),  # type: ignore[arg-type]
        mean_ulp=float("nan"),
        max_abs=float("inf"),
        max_rel=-math.inf,
        max_scaled=np.float64(0.5),  # type: ignore[arg-type]
        worst_expected=np.float32(1.5),  # type: ignore[arg-type]
        worst_actual=float("nan"),
        min_passing={"ulp": None, "rtol": math.inf, "atol": 0.25, "scaled": None},
        shape=(3,),
        worst_elements=[
            {"index": [1], "expected": 1.5, "actual": math.nan, "ulp": None, "abs": math.inf, "rel": math.inf}
        ],
    )
    data = verdict.to_json()
    text = json.dumps(data, allow_nan=False)  # would raise on a bare NaN or Infinity
    assert data["max_ulp"] == 5 and type(data["max_ulp"]) is int
    assert data["mean_ulp"] == "nan" and data["max_abs"] == "inf" and data["max_rel"] == "-inf"
    assert data["worst_expected"] == 1.5 and data["worst_actual"] == "nan"
    assert data["min_passing"] == {"ulp": None, "rtol": "inf", "atol": 0.25, "scaled": None}
    assert data["shape"] == [3]
    assert "outputs" not in data and "underlying_status" not in data
    result_fields = [
        "status", "message", "tolerance", "total", "mismatched", "max_ulp", "mean_ulp", "p99_ulp", "ulp_histogram",
        "max_abs", "max_rel", "max_scaled", "first_mismatch_index", "worst_index", "worst_expected", "worst_actual",
        "min_passing",
    ]
    assert list(data)[: len(result_fields)] == result_fields
    again = Verdict.from_json(json.loads(text))
    assert math.isnan(again.mean_ulp or 0.0) and again.max_abs == math.inf and again.min_passing["rtol"] == math.inf
    assert again.shape == (3,) and again.status is Status.MISMATCH
    assert again.worst_elements[0]["abs"] == math.inf and again.worst_elements[0]["index"] == [1]


def test_json_round_trip_of_outputs_and_strings() -> None:
    inner = Verdict(Status.DIVERGED, output="labels", dtype="str", worst_expected="inf", worst_actual="nan")
    outer = Verdict(Status.DIVERGED, outputs={"labels": inner}, underlying_status=None)
    data = outer.to_json()
    assert data["outputs"][0]["output"] == "labels"
    again = Verdict.from_json(json.loads(json.dumps(data)))
    assert again.outputs["labels"].worst_expected == "inf"  # a string output stays a string
    assert again == outer
    known = Verdict(Status.KNOWN, underlying_status="diverged")  # type: ignore[arg-type]
    assert known.to_json()["underlying_status"] == "diverged"
    assert Verdict.from_json(known.to_json()).underlying_status is Status.DIVERGED


def test_headline() -> None:
    assert headline(Status.DIVERGED, "y", "what") == "DIVERGED | Output: 'y' | what"
    assert headline(Status.CLOSE, None, "what") == "CLOSE | what"


@pytest.mark.parametrize(
    ("count", "total", "text"),
    [
        (0, 0, "0 / 0 (0%)"),
        (0, 10, "0 / 10 (0%)"),
        (3, 640, "3 / 640 (0.469%)"),
        (1, 10**9, "1 / 1000000000 (<0.001%)"),
        (10**9 - 1, 10**9, "999999999 / 1000000000 (>99.999%)"),
        (7, 7, "7 / 7 (100%)"),
    ],
)
def test_share(count: int, total: int, text: str) -> None:
    assert share(count, total) == text


@pytest.mark.parametrize(
    ("value", "rounded"),
    [(1.19e-7, 1.2e-7), (1.2e-7, 1.2e-7), (0.0344, 0.035), (2.0, 2.0), (0.0, 0.0), (97.0, 97.0), (101.0, 110.0)],
)
def test_round_up_never_rounds_below(value: float, rounded: float) -> None:
    assert round_up(value) == rounded
    assert round_up(value) >= value


def test_format_value_prints_in_the_values_own_dtype() -> None:
    assert format_value(float(np.float32(0.1)), "float32") == "0.1"
    assert format_value(0.1, "float64") == "0.1"
    assert format_value(3, "int64") == "3"
    assert format_value("a", "str") == "'a'"
    assert format_value(None, "float32") == "-"


def test_table_aligns_columns() -> None:
    assert table(("index", "ulp"), [("[0]", "12"), ("[10, 3]", "1")]) == [
        "    index    ulp",
        "    [0]      12",
        "    [10, 3]  1",
    ]
