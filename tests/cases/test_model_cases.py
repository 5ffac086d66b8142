"""The built-in model graphs (cases/models): what every one of them must offer. Running them is the
pytest plugin's job (`pytest --dh-cases cases`): one item per check of every variant."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from detharness.cases import Case, builtin_cases_path, discover

MODELS_DIR = builtin_cases_path() / "models"
MODEL_CASES = [c for c in discover([MODELS_DIR]) if "model" in c.tags]


def _ids(cases: list[Case]) -> list[str]:
    return [c.id for c in cases]


def test_the_library_has_at_least_twelve_model_cases() -> None:
    assert len(MODEL_CASES) >= 12, _ids(MODEL_CASES)
    assert all(c.id.startswith("models/") for c in MODEL_CASES)


@pytest.mark.parametrize("c", MODEL_CASES, ids=_ids(MODEL_CASES))
def test_a_model_case_is_a_torch_module_exported_to_onnx_and_ported_to_jax(c: Case) -> None:
    torch_modules = [i for i in c.impls.values() if i.backend == "torch" and i.module]
    assert torch_modules, f"{c.id}: no torch module builder (the source every other implementation follows)"
    assert any({"eager", "onnx"} <= set(i.modes) for i in torch_modules), f"{c.id}: no torch module in eager and onnx"
    assert any(i.backend == "jax" for i in c.impls.values()), f"{c.id}: no jax port"
    assert any("float32" in i.dtypes for i in c.impls.values() if not i.reference)


@pytest.mark.parametrize("c", MODEL_CASES, ids=_ids(MODEL_CASES))
def test_a_model_case_is_held_against_a_float64_numpy_reference(c: Case) -> None:
    ref = c.reference_impl
    # float64 first (the reference variant); a float32 second is the accuracy's baseline at that dtype.
    assert ref is not None and ref.backend == "numpy" and ref.dtypes[0] == "float64", c.id
    assert set(ref.dtypes) <= {"float64", "float32"}, c.id


@pytest.mark.parametrize("c", MODEL_CASES, ids=_ids(MODEL_CASES))
def test_a_model_case_has_a_tolerance_for_every_float_dtype_it_runs(c: Case) -> None:
    dtypes = {d for i in c.impls.values() if not i.reference for d in i.dtypes}
    for dtype in dtypes:
        assert c.tolerance_for("y", dtype) is not None, f"{c.id}: no tolerance for {dtype} (the default is not tuned)"


# The library's own run is the plugin's items (`pytest --dh-cases cases`, the CI command): a model
# variant that diverges fails there, a known one is xfail, a skip shows its reason under -rs. What
# stays here is specific to one case and runs only that case's variants.


@pytest.mark.slow
def test_gelu_erf_against_jax_default_tanh_is_a_known_divergence_that_still_holds() -> None:
    # apache/tvm#18750: the erf and tanh forms differ by ~1.5e-4 at x = -1; jax.nn.gelu defaults to tanh.
    pytest.importorskip("jax")
    variant = "models/gelu[jax-default:cpu:float32:jit]"
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    done = subprocess.run([sys.executable, "-m", "detharness", "run", "--cases", str(MODELS_DIR / "gelu.py"), "-k",
                           variant, "--check", "backend", "--format", "json"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    [result] = [r for r in json.loads(done.stdout)["results"] if r["variant"] == variant]
    assert result["status"] == "known" and result["underlying_status"] == "diverged", result["message"]
    assert 1e-4 < result["max_abs"] < 1e-3


def test_every_hand_built_onnx_model_declares_the_ir_version_its_opsets_need() -> None:
    """An ONNX model built with onnx.helper gets that onnx's newest IR version, which an older
    onnxruntime refuses ("Unsupported model IR version: 14, max supported IR version: 13", onnxruntime
    1.30 on a GPU runner): the library's own models declare the oldest IR their opsets allow."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    built = 0
    for c in discover([builtin_cases_path()]):
        for impl in c.impls.values():
            if impl.backend != "onnxruntime" or not impl.module:
                continue
            model = impl.fn(c.make_params())
            if isinstance(model, bytes):
                model = onnx.load_from_string(model)
            assert model.ir_version == helper.find_min_ir_version_for(list(model.opset_import)), c.id
            built += 1
    assert built >= 2
