"""detharness.bisect: pairing layers, the first divergence, introduced vs inherited error, the line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detharness.bisect import Layer, curve, first_divergence, introduced_by_layer, line

DEPTH = 10
WIDTH = 16
PLANTED = 3


def _weights(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(WIDTH, WIDTH)) / 4).astype(np.float32) for _ in range(DEPTH)]


def _input() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(4, WIDTH)).astype(np.float32)


def _layer(index: int, weight: np.ndarray, x: np.ndarray) -> np.ndarray:
    out: np.ndarray = x @ weight
    return np.tanh(out) * np.float32(1.5) if index % 2 == 0 else out


def _chain(weights: list[np.ndarray]) -> list[Layer]:
    layers: list[Layer] = []
    x = _input()
    for index, weight in enumerate(weights):
        x = _layer(index, weight, x)
        layers.append((f"block.{index}", x))
    return layers


def _nudged(weights: list[np.ndarray]) -> list[np.ndarray]:
    out = [w.copy() for w in weights]
    out[PLANTED][0, 0] = np.nextafter(out[PLANTED][0, 0], np.float32(np.inf))
    return out


@pytest.fixture(scope="module")
def runs() -> tuple[list[Layer], list[Layer], dict[str, np.ndarray]]:
    weights = _weights()
    nudged = _nudged(weights)
    baseline = _chain(weights)
    candidate = _chain(nudged)
    # Shadow mode: each candidate layer re-run on the baseline's input to it.
    inputs = [_input()] + [array for _, array in baseline[:-1]]
    shadow = {f"block.{i}": _layer(i, nudged[i], inputs[i]) for i in range(DEPTH)}
    return baseline, candidate, shadow


def test_curve_lists_every_layer_and_planted_change(runs: tuple[list[Layer], list[Layer], dict[str, np.ndarray]]) -> None:
    baseline, candidate, _ = runs
    rows = curve(baseline, candidate, tolerance=None)
    assert [row["layer"] for row in rows] == [f"block.{i}" for i in range(DEPTH)]
    assert [row["index"] for row in rows] == list(range(DEPTH))
    assert [row["identical"] for row in rows[:PLANTED]] == [True] * PLANTED
    assert all(row["status"] == "identical" and row["max_ulp"] == 0 for row in rows[:PLANTED])
    assert not rows[PLANTED]["identical"]
    assert rows[PLANTED]["max_ulp"] > 0
    assert rows[PLANTED]["first_mismatch_index"] is not None
    assert set(rows[0]) == {"layer", "index", "status", "max_ulp", "max_scaled", "first_mismatch_index", "identical"}
    json.dumps(rows, allow_nan=False)


def test_first_divergence_names_planted_layer_under_loose_tolerance(
    runs: tuple[list[Layer], list[Layer], dict[str, np.ndarray]],
) -> None:
    baseline, candidate, _ = runs
    fd = first_divergence(baseline, candidate, tolerance="close(1e-3, 1e-3)")
    assert fd is not None
    assert set(fd) == {
        "layer", "layer_index", "first_mismatch_index", "status", "max_ulp", "max_scaled",
        "introduced_scaled", "inherited_scaled", "first_beyond_tolerance", "approximate", "layers_compared",
    }
    assert fd["layer"] == f"block.{PLANTED}"
    assert fd["layer_index"] == PLANTED
    assert fd["status"] == "close"
    assert fd["max_ulp"] > 0 and fd["max_scaled"] > 0
    assert fd["first_beyond_tolerance"] is None
    assert fd["introduced_scaled"] is None and fd["inherited_scaled"] is None
    assert fd["approximate"] is False
    assert fd["layers_compared"] == DEPTH
    json.dumps(fd, allow_nan=False)
    text = line(fd)
    assert text.startswith(f"first differs at 'block.{PLANTED}' (layer {PLANTED + 1} of {DEPTH}), ")
    assert f"{fd['max_ulp']:,} ULP" in text
    assert "within tolerance throughout" in text


def test_tight_tolerance_finds_where_error_grows_past_it(
    runs: tuple[list[Layer], list[Layer], dict[str, np.ndarray]],
) -> None:
    baseline, candidate, _ = runs
    rows = curve(baseline, candidate, tolerance=None)
    budget = rows[PLANTED]["max_ulp"]
    grown = next(row for row in rows if row["max_ulp"] > budget)  # the error grows downstream
    fd = first_divergence(baseline, candidate, tolerance=f"ulp({budget})")
    assert fd is not None
    assert fd["layer_index"] == PLANTED and fd["status"] == "close"
    assert fd["first_beyond_tolerance"] == {"layer": grown["layer"], "layer_index": grown["index"]}
    assert grown["index"] > PLANTED
    assert f"beyond tolerance from {grown['layer']!r} (layer {grown['index'] + 1} of {DEPTH})" in line(fd)

    exact = first_divergence(baseline, candidate, tolerance="exact")
    assert exact is not None
    assert exact["status"] == "diverged"
    assert exact["first_beyond_tolerance"] == {"layer": f"block.{PLANTED}", "layer_index": PLANTED}
    assert "beyond tolerance there" in line(exact)


def test_tolerance_mapping_by_dtype(runs: tuple[list[Layer], list[Layer], dict[str, np.ndarray]]) -> None:
    baseline, candidate, _ = runs
    fd = first_divergence(baseline, candidate, tolerance={"float32": "exact", "default": "close(1, 1)"})
    assert fd is not None and fd["status"] == "diverged"
    fd = first_divergence(baseline, candidate, tolerance={"float64": "exact", "default": "close(1, 1)"})
    assert fd is not None and fd["status"] == "close"


def test_shadow_separates_introduced_from_inherited(
    runs: tuple[list[Layer], list[Layer], dict[str, np.ndarray]],
) -> None:
    baseline, candidate, shadow = runs
    fd = first_divergence(baseline, candidate, tolerance=None, shadow=shadow)
    assert fd is not None and fd["layer"] == f"block.{PLANTED}"
    assert fd["introduced_scaled"] > 0
    assert fd["inherited_scaled"] == 0
    text = line(fd)
    assert "introduced " in text and text.split("; ")[0].endswith("inherited 0")

    per_layer = {row["layer"]: row for row in introduced_by_layer(baseline, candidate, shadow)}
    assert list(per_layer) == [f"block.{i}" for i in range(DEPTH)]
    for i in range(PLANTED):
        assert per_layer[f"block.{i}"]["introduced_scaled"] == 0
        assert per_layer[f"block.{i}"]["inherited_scaled"] == 0
    assert per_layer[f"block.{PLANTED}"]["introduced_scaled"] > 0
    assert per_layer[f"block.{PLANTED}"]["inherited_scaled"] == 0
    assert per_layer["block.5"]["introduced_scaled"] == 0  # bitwise: the layer itself is unchanged
    assert per_layer["block.5"]["inherited_scaled"] > 0
    json.dumps(list(per_layer.values()), allow_nan=False)


def test_shadow_without_the_layer_gives_null(runs: tuple[list[Layer], list[Layer], dict[str, np.ndarray]]) -> None:
    baseline, candidate, shadow = runs
    partial = {name: array for name, array in shadow.items() if name != f"block.{PLANTED}"}
    fd = first_divergence(baseline, candidate, tolerance=None, shadow=partial, approximate=True)
    assert fd is not None
    assert fd["introduced_scaled"] is None and fd["inherited_scaled"] is None
    assert fd["approximate"] is True
    assert "approximate" in line(fd)
    rows = introduced_by_layer(baseline, candidate, partial)
    assert rows[PLANTED]["introduced_scaled"] is None


def test_missing_layers_and_structural_mismatches_are_listed() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    baseline: list[Layer] = [("in", a), ("only_base", a), ("reshaped", a), ("retyped", a), ("tail", a)]
    candidate: list[Layer] = [
        ("in", a.copy()), ("reshaped", a.reshape(3, 2)), ("retyped", a.astype(np.int32)),
        ("only_cand", a), ("tail", a.copy()),
    ]
    rows = curve(baseline, candidate, tolerance=None)
    by_name = {row["layer"]: row for row in rows}
    assert [row["layer"] for row in rows] == ["in", "only_base", "reshaped", "retyped", "tail", "only_cand"]
    assert by_name["only_base"]["status"] == "missing" and by_name["only_base"]["index"] == 1
    assert by_name["only_cand"]["status"] == "missing" and by_name["only_cand"]["index"] is None
    assert by_name["reshaped"]["status"] == "mismatch" and by_name["reshaped"]["first_mismatch_index"] is None
    assert by_name["retyped"]["status"] == "mismatch"
    assert by_name["in"]["identical"] and by_name["tail"]["identical"]
    fd = first_divergence(baseline, candidate, tolerance=None)
    assert fd is not None
    assert fd["layer"] == "reshaped" and fd["layer_index"] == 2 and fd["status"] == "mismatch"
    assert fd["max_ulp"] is None and fd["max_scaled"] is None
    assert fd["first_beyond_tolerance"] == {"layer": "reshaped", "layer_index": 2}
    assert fd["layers_compared"] == 4
    assert "mismatch" in line(fd)
    json.dumps(rows, allow_nan=False)


def test_missing_layers_are_skipped_by_the_search() -> None:
    a = np.ones(4, dtype=np.float32)
    fd = first_divergence([("x", a), ("gone", a)], [("x", a.copy()), ("new", a * 2)], tolerance=None)
    assert fd is None
    assert line(None, layers_compared=0) == "no layer in common to compare"


def test_everything_identical(runs: tuple[list[Layer], list[Layer], dict[str, np.ndarray]]) -> None:
    baseline, _, shadow = runs
    again = _chain(_weights())
    assert first_divergence(baseline, again, tolerance=None, shadow=shadow) is None
    assert line(None, layers_compared=DEPTH) == f"every layer bitwise identical ({DEPTH} compared)"
    assert line(None) == "every layer bitwise identical"
    assert all(row["identical"] for row in curve(baseline, again, tolerance="exact"))


def test_signed_zero_is_not_identical() -> None:
    fd = first_divergence([("z", np.zeros(3))], [("z", -np.zeros(3))], tolerance=None)
    assert fd is not None and fd["status"] == "close" and fd["first_mismatch_index"] == [0]


def test_repeated_names_pair_by_occurrence() -> None:
    a = np.ones(3, dtype=np.float32)
    b = a.copy()
    b[2] = np.nextafter(b[2], np.float32(2))
    baseline: list[Layer] = [("relu", a), ("relu", a)]
    candidate: list[Layer] = [("relu", a.copy()), ("relu", b)]
    assert [row["layer"] for row in curve(baseline, candidate, tolerance=None)] == ["relu", "relu#1"]
    fd = first_divergence(baseline, candidate, tolerance=None, shadow={"relu#1": a})
    assert fd is not None and fd["layer"] == "relu#1" and fd["layer_index"] == 1
    assert fd["first_mismatch_index"] == [2]
    assert fd["introduced_scaled"] == 0 and fd["inherited_scaled"] > 0


def test_non_finite_figures_are_json_safe() -> None:
    fd = first_divergence([("z", np.zeros(2))], [("z", np.ones(2))], tolerance=None)
    assert fd is not None and fd["max_scaled"] == "inf"
    json.dumps(fd, allow_nan=False)
    assert "inf of the output's scale" in line(fd)


def test_line_format_matches_the_report_example() -> None:
    fd = {
        "layer": "encoder.layers.0.self_attn", "layer_index": 6, "first_mismatch_index": [0, 3], "status": "close",
        "max_ulp": 2077, "max_scaled": 3.2e-7, "introduced_scaled": 3.1e-7, "inherited_scaled": 0.0,
        "first_beyond_tolerance": None, "approximate": False, "layers_compared": 42,
    }
    assert line(fd) == (
        "first differs at 'encoder.layers.0.self_attn' (layer 7 of 42), 2,077 ULP, "
        "introduced 3.1e-7 of the output's scale, inherited 0; within tolerance throughout"
    )


@settings(max_examples=60, deadline=None)
@given(
    flags=st.lists(st.tuples(st.booleans(), st.sampled_from(["same", "nudged", "missing"])), min_size=1, max_size=8),
    value=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32),
)
def test_never_names_a_layer_before_the_first_non_identical_pair(
    flags: list[tuple[bool, str]], value: float
) -> None:
    base_layer = np.full(5, value, dtype=np.float32)
    baseline: list[Layer] = []
    candidate: list[Layer] = []
    expected_index = None
    for index, (candidate_only, kind) in enumerate(flags):
        name = f"layer{index}"
        if kind == "missing":
            (candidate if candidate_only else baseline).append((name, base_layer))
            continue
        baseline.append((name, base_layer))
        if kind == "nudged":
            changed = base_layer.copy()
            changed[index % 5] = np.nextafter(changed[index % 5], np.float32(np.inf))
            candidate.append((name, changed))
            if expected_index is None:
                expected_index = len(baseline) - 1
        else:
            candidate.append((name, base_layer.copy()))
    fd = first_divergence(baseline, candidate, tolerance=None)
    if expected_index is None:
        assert fd is None
    else:
        assert fd is not None
        assert fd["layer_index"] == expected_index
        assert fd["layer"] == baseline[expected_index][0]
        assert fd["first_mismatch_index"] == [int(fd["layer"].removeprefix("layer")) % 5]
