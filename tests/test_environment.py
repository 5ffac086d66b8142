"""Tests for detharness.environment: fingerprint keys, redaction, ids, diffs and the text form."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detharness import bundle, environment
from detharness.environment import (
    REDACTED_PATH,
    VOLATILE_KEYS,
    diff,
    environment_id,
    fingerprint,
    format_fingerprint,
    merge,
    redact,
    short_id,
)

EXPECTED_KEYS = {
    "python.version",
    "python.implementation",
    "os.system",
    "os.release",
    "os.libc",
    "machine.arch",
    "cpu.model",
    "cpu.count",
    "cpu.isa",
    "numpy.version",
    "numpy.simd.baseline",
    "numpy.simd.dispatch",
    "ml_dtypes.version",
    "blas.library",
    "blas.version",
    "blas.threads",
    "blas.architecture",
    "openmp.library",
    "openmp.threads",
    "env.ATEN_CPU_CAPABILITY",
    "env.OMP_NUM_THREADS",
    "env.XLA_FLAGS",
    "env.CUBLAS_WORKSPACE_CONFIG",
    "env.NVIDIA_TF32_OVERRIDE",
    "env.PYTHONHASHSEED",
    "env.JAX_ENABLE_X64",
    "env.JAX_DEFAULT_MATMUL_PRECISION",
}


@pytest.fixture(scope="module")
def fp() -> dict[str, Any]:
    return fingerprint()


def test_fingerprint_has_the_documented_keys(fp: dict[str, Any]) -> None:
    assert set(fp) >= EXPECTED_KEYS
    assert all(isinstance(key, str) and "." in key for key in fp)


def test_fingerprint_is_json_serializable_and_flat(fp: dict[str, Any]) -> None:
    assert json.loads(json.dumps(fp, allow_nan=False)) == fp
    for key, value in fp.items():
        assert value is None or isinstance(value, (str, int, list)), key
        if isinstance(value, list):
            assert all(isinstance(item, str) for item in value), key


def test_fingerprint_values_describe_this_process(fp: dict[str, Any]) -> None:
    import ml_dtypes
    import numpy as np

    assert fp["numpy.version"] == np.__version__
    assert fp["ml_dtypes.version"] == ml_dtypes.__version__
    assert fp["python.implementation"] == "CPython" or sys.implementation.name != "cpython"
    assert fp["cpu.isa"] == sorted(fp["cpu.isa"])
    assert set(fp["numpy.simd.dispatch"]) <= set(environment._numpy_umath().__cpu_dispatch__)


def test_fingerprint_holds_no_paths(fp: dict[str, Any]) -> None:
    text = json.dumps(fp)
    assert sys.prefix not in text
    assert "/site-packages" not in text and "\\site-packages" not in text


def test_unset_variables_are_recorded_as_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    fp = fingerprint()
    assert fp["env.OMP_NUM_THREADS"] is None
    assert fp["env.XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false"


def test_variable_families_are_recorded_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MKL_SOMETHING_NEW", "1")
    monkeypatch.setenv("OPENBLAS_VERBOSE", "2")
    fp = fingerprint()
    assert fp["env.MKL_SOMETHING_NEW"] == "1"
    assert fp["env.OPENBLAS_VERBOSE"] == "2"


def test_openblas_thread_timeout_is_not_part_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """How long idle BLAS threads spin changes no result: runs that differ only in it share an id."""
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    without = fingerprint()
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "30")
    with_it = fingerprint()
    assert "env.OPENBLAS_THREAD_TIMEOUT" not in with_it
    assert environment_id(with_it) == environment_id(without)


def test_variable_holding_a_path_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/home/alice/dumps --xla_cpu_enable_fast_math=false")
    monkeypatch.setenv("MKL_CONFIG", "/home/alice/mkl.cfg")
    fp = fingerprint()
    assert fp["env.XLA_FLAGS"] == "--xla_dump_to=<redacted path> --xla_cpu_enable_fast_math=false"
    assert fp["env.MKL_CONFIG"] == REDACTED_PATH
    assert "alice" not in json.dumps(fp)


# --- redaction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/home/alice/x", REDACTED_PATH),
        ("/Users/Alice Smith/My Models", REDACTED_PATH),
        ("~", REDACTED_PATH),
        ("~bob/x", REDACTED_PATH),
        ("./data/x.onnx", REDACTED_PATH),
        ("C:\\Users\\bob\\x", REDACTED_PATH),
        ("c:/tmp", REDACTED_PATH),
        ("\\\\server\\share\\x", REDACTED_PATH),
        (
            "--xla_dump_to=/tmp/x --xla_cpu_enable_fast_math=false",
            "--xla_dump_to=<redacted path> --xla_cpu_enable_fast_math=false",
        ),
        ("--x=C:/a/b,d:\\x", "--x=<redacted path>,<redacted path>"),
        ('--dir="/a b/c" --y=1', "--dir=<redacted path> --y=1"),
        ("models/mlp.onnx", REDACTED_PATH),
        ("file:///etc/x", "file:<redacted path>"),
        (":4096:8", ":4096:8"),
        ("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz"),
        ("avx512_bf16", "avx512_bf16"),
        ("", ""),
    ],
    ids=lambda value: repr(value)[:30],
)
def test_redact_examples(value: str, expected: str) -> None:
    assert redact(value) == expected


def test_redact_leaves_non_strings_and_recurses_into_lists() -> None:
    assert redact(None) is None
    assert redact(4) == 4
    assert redact(["avx2", "/opt/x"]) == ["avx2", REDACTED_PATH]
    assert redact({"a": "~/x"}) == {"a": REDACTED_PATH}


_SEGMENT = st.text(st.characters(codec="utf-8", exclude_characters="/\\\x00"), min_size=1, max_size=12)
_TOKEN_SEGMENT = st.text(
    st.characters(categories=("Lu", "Ll", "Nd"), include_characters="._-", codec="utf-8"), min_size=1, max_size=12
)


@st.composite
def paths(draw: st.DrawFn, segment: st.SearchStrategy[str] = _SEGMENT) -> str:
    parts = draw(st.lists(segment, min_size=1, max_size=5))
    style = draw(st.sampled_from(["posix", "home", "windows", "unc", "relative"]))
    if style == "posix":
        return "/" + "/".join(parts)
    if style == "home":
        return "~/" + "/".join(parts)
    if style == "windows":
        return draw(st.sampled_from("CDcz")) + ":\\" + "\\".join(parts)
    if style == "unc":
        return "\\\\" + "\\".join(parts)
    return "./" + "/".join(parts)


@given(paths())
def test_redact_replaces_any_path_value_whole(path: str) -> None:
    assert redact(path) == REDACTED_PATH


@given(paths(_TOKEN_SEGMENT), st.sampled_from(["--dump_to=", "dir:", "", "a,"]))
def test_redact_replaces_a_path_inside_flags_and_keeps_the_rest(path: str, prefix: str) -> None:
    value = f"--xla_cpu_enable_fast_math=false {prefix}{path} --xla_gpu_autotune_level=0"
    expected = f"--xla_cpu_enable_fast_math=false {prefix}{REDACTED_PATH} --xla_gpu_autotune_level=0"
    assert redact(value) == expected


@given(st.text(st.characters(codec="utf-8", exclude_characters="/\\~")))
def test_redact_leaves_text_without_path_characters_alone(text: str) -> None:
    # No separator, no home: only a leading drive letter could still look like a path, and that
    # needs a separator after it.
    assert redact(text) == text


@given(st.text())
def test_redact_is_idempotent(text: str) -> None:
    once = redact(text)
    assert redact(once) == once


# --- merge, ids, diff --------------------------------------------------------------------------


def test_merge_adds_keys_redacted_and_extra_wins() -> None:
    merged = merge({"a.x": 1, "b.y": 2}, {"b.y": 3, "torch.lib": "/opt/torch/lib"})
    assert merged == {"a.x": 1, "b.y": 3, "torch.lib": REDACTED_PATH}


def test_merge_refuses_keys_that_are_not_dotted() -> None:
    with pytest.raises(
        ValueError, match=re.escape("fingerprint keys are dotted strings like 'torch.version', got 'torch'")
    ):
        merge({}, {"torch": "2.4"})


def test_environment_id_is_stable_under_key_order(fp: dict[str, Any]) -> None:
    reordered = dict(reversed(list(fp.items())))
    assert environment_id(reordered) == environment_id(fp)
    assert len(environment_id(fp)) == 64
    assert short_id(fp) == environment_id(fp)[:12]


def test_environment_id_changes_with_a_numerics_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    unset = environment_id(fingerprint())
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one = environment_id(fingerprint())
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    four = environment_id(fingerprint())
    assert len({unset, one, four}) == 3


def test_environment_id_ignores_volatile_keys_and_unset_values(fp: dict[str, Any]) -> None:
    assert "cpu.count" in VOLATILE_KEYS
    assert environment_id({**fp, "cpu.count": 1024}) == environment_id(fp)
    # a variable a newer detharness records, unset here: the same environment
    assert environment_id({**fp, "env.SOME_NEW_VARIABLE": None}) == environment_id(fp)
    assert environment_id({**fp, "env.SOME_NEW_VARIABLE": "1"}) != environment_id(fp)


def test_diff_lists_changed_and_one_sided_keys_sorted() -> None:
    a = {"numpy.version": "2.0.0", "cpu.isa": ["avx2"], "env.OMP_NUM_THREADS": None, "torch.version": "2.4"}
    b = {"numpy.version": "2.1.0", "cpu.isa": ["avx2"], "env.OMP_NUM_THREADS": "1", "jax.version": "0.4"}
    result = diff(a, b)
    assert result == {
        "env.OMP_NUM_THREADS": [None, "1"],
        "jax.version": [None, "0.4"],
        "numpy.version": ["2.0.0", "2.1.0"],
        "torch.version": ["2.4", None],
    }
    assert list(result) == sorted(result)


def test_diff_of_equal_fingerprints_is_empty(fp: dict[str, Any]) -> None:
    assert diff(fp, dict(fp)) == {}
    # absent on one side and None on the other: no difference to show
    assert diff({"env.X": None}, {}) == {}


def test_format_fingerprint_groups_and_aligns() -> None:
    fp = {
        "env.OMP_NUM_THREADS": None,
        "numpy.version": "2.4.6",
        "cpu.isa": ["avx", "avx2"],
        "torch.version": "2.4.0",
        "python.version": "3.11.7",
        "numpy.simd.dispatch": [],
    }
    assert format_fingerprint(fp) == (
        "python.version       3.11.7\n"
        "\n"
        "cpu.isa              avx avx2\n"
        "\n"
        "numpy.simd.dispatch  (none)\n"
        "numpy.version        2.4.6\n"
        "\n"
        "torch.version        2.4.0\n"
        "\n"
        "env.OMP_NUM_THREADS  (unset)\n"
    )
    assert format_fingerprint(fp, with_id=True).startswith(f"environment          {short_id(fp)}\n\n")


@pytest.mark.parametrize(
    ("module", "allowed"),
    [(environment, {"numpy", "ml_dtypes", "threadpoolctl"}), (bundle, {"numpy", "detharness"})],
    ids=["environment", "bundle"],
)
def test_module_imports_no_framework(module: Any, allowed: set[str]) -> None:
    # Read from the source, not sys.modules: another test may have imported torch already.
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported - set(sys.stdlib_module_names) - {"__future__"} <= allowed


def test_isa_falls_back_to_numpy_without_cpuinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment, "_first_cpuinfo_block", lambda: {})
    monkeypatch.setattr(
        environment, "_numpy_cpu_features", lambda: {"AVX2": True, "FMA3": True, "AVX512F": False, "SVE": True}
    )
    assert environment._cpu_isa() == ["avx2", "fma", "sve"]
