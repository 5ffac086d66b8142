from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from detharness.cases import (
    Case,
    KnownDivergence,
    Registry,
    builtin_cases_path,
    collecting_into,
    discover,
    parse_variant_id,
    variant_id,
)
from detharness.errors import CaseError


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


CASE_FILE = """
    from detharness import case

    c = case("demo/double", tags={"demo"}, tolerance="ulp(2)",
             inputs=lambda rng: {"x": rng.standard_normal(8).astype("float32")},
             params=lambda rng: {"w": rng.standard_normal(8).astype("float32")})

    @c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
    def _(x, params):
        return {"y": x * 2 + params["w"]}

    @c.impl("torch", backend="torch", dtypes=("float32", "float16"), devices=("cpu", "cuda"))
    def _(x, params):
        return {"y": x * 2 + params["w"]}
"""


def test_discover_reads_a_case_file_into_a_registry(tmp_path: Path) -> None:
    registry = discover([_write(tmp_path / "demo.py", CASE_FILE)])
    c = registry["demo/double"]
    assert [v.id for v in c.variants()] == [
        "demo/double[numpy:cpu:float64:eager]",

        "demo/double[torch:cpu:float32:eager]",
        "demo/double[torch:cpu:float16:eager]",
        "demo/double[torch:cuda:float32:eager]",
        "demo/double[torch:cuda:float16:eager]",
    ]
    assert c.reference_variant is not None and c.reference_variant.id == "demo/double[numpy:cpu:float64:eager]"
    assert c.tags == {"demo"}
    assert c.location.endswith("demo.py:4")


def test_inputs_and_params_are_seeded_and_independent(tmp_path: Path) -> None:
    c = discover([_write(tmp_path / "demo.py", CASE_FILE)])["demo/double"]
    again = discover([_write(tmp_path / "again" / "demo.py", CASE_FILE)])["demo/double"]
    np.testing.assert_array_equal(c.make_inputs()["x"], again.make_inputs()["x"])
    assert not np.array_equal(c.make_inputs()["x"], c.make_params()["w"])


def test_fingerprint_changes_when_the_case_source_changes(tmp_path: Path) -> None:
    before = discover([_write(tmp_path / "a.py", CASE_FILE)])["demo/double"].fingerprint
    same = discover([_write(tmp_path / "b.py", CASE_FILE)])["demo/double"].fingerprint
    after = discover([_write(tmp_path / "c.py", CASE_FILE.replace("x * 2", "x * 3"))])["demo/double"].fingerprint
    assert before == same
    assert before != after


def test_duplicate_case_id_names_both_places(tmp_path: Path) -> None:
    _write(tmp_path / "one.py", CASE_FILE)
    _write(tmp_path / "two.py", CASE_FILE)
    with pytest.raises(CaseError) as info:
        discover([tmp_path])
    message = str(info.value)
    assert message.startswith("duplicate case id 'demo/double': defined at ")
    assert "one.py:4" in message and "two.py:4" in message


def test_case_file_that_raises_names_the_file_line_and_error(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.py", "import numpy\nraise RuntimeError('no data here')\n")
    with pytest.raises(CaseError) as info:
        discover([bad])
    assert str(info.value) == f"case file {bad} failed to import (line 2): RuntimeError: no data here"


def test_missing_case_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CaseError, match="no such file or directory"):
        discover([tmp_path / "nope"])


def test_two_references_are_refused() -> None:
    with collecting_into(Registry()):
        c = Case("demo/x")
        c.impl("a", backend="numpy", reference=True)(lambda x: x)
        with pytest.raises(CaseError, match="two references"):
            c.impl("b", backend="numpy", reference=True)(lambda x: x)


def test_bad_case_id_is_refused() -> None:
    with pytest.raises(CaseError, match="bad case id"):
        Case("has space")


def test_tolerance_lookup_by_output_then_dtype_then_default() -> None:
    c = Case("demo/t", tolerance={"logits": "ulp(1)", "float16": "close(1e-3, 1e-5)", "default": "ulp(4)"})
    assert c.tolerance_for("logits", "float16") == "ulp(1)"
    assert c.tolerance_for("probs", "float16") == "close(1e-3, 1e-5)"
    assert c.tolerance_for("probs", "float32") == "ulp(4)"
    assert Case("demo/u").tolerance_for("y", "float32") is None


@pytest.mark.parametrize(
    "parts",
    [("models/mlp", "torch", "cpu", "float32", "eager"), ("roundtrip/x", "torch", "cuda", "bfloat16", "roundtrip:safetensors")],
)
def test_variant_ids_split_on_the_first_three_colons(parts: tuple[str, ...]) -> None:
    assert parse_variant_id(variant_id(*parts)) == parts


def test_known_divergence_applies_by_variant_check_and_environment() -> None:
    known = KnownDivergence("softmax kernel differs", variants="*[torch:*", when={"torch.cpu_capability": "DEFAULT"})
    assert known.applies("models/softmax[torch:cpu:float32:eager]", "environment", {"torch.cpu_capability": "DEFAULT"})
    assert not known.applies("models/softmax[torch:cpu:float32:eager]", "environment", {"torch.cpu_capability": "AVX512"})
    assert not known.applies("models/softmax[jax:cpu:float32:jit]", "environment", {"torch.cpu_capability": "DEFAULT"})


def test_builtin_library_has_the_starter_cases() -> None:
    registry = discover([builtin_cases_path()])
    ids = {c.id for c in registry}
    for wanted in ("preprocessing/standardize", "preprocessing/impute_mean", "preprocessing/one_hot", "models/softmax",
                   "models/layer_norm", "models/gelu", "models/mlp", "models/conv_block"):
        assert wanted in ids
