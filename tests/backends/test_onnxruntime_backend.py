"""The onnxruntime backend: models built with onnx.helper, every optimization level, safe loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detharness.backends import UnsupportedVariant, VariantSpec, load_model_safely
from detharness.backends.onnxruntime_backend import OPTIMIZATION_LEVELS, OnnxRuntimeBackend, create_session, run_session
from detharness.dtypes import ALL_DTYPES
from detharness.errors import CaseError, UsageError

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
W = np.arange(12, dtype="float32").reshape(4, 3) / 10
B = np.array([0.5, -1.0, 0.25], dtype="float32")


def dense_relu(elem_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """y = relu(x @ W + b), with W and b as initializers."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["z"]),
            helper.make_node("Relu", ["z"], ["y"]),
        ],
        "dense_relu",
        [helper.make_tensor_value_info("x", elem_type, [None, 4])],
        [helper.make_tensor_value_info("y", elem_type, None)],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def identity(name: str) -> bytes:
    elem = TensorProto.BFLOAT16 if name == "bfloat16" else helper.np_dtype_to_tensor_dtype(np.dtype(name))
    graph = helper.make_graph(
        [helper.make_node("Identity", ["a"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("a", elem, None)],
        [helper.make_tensor_value_info("y", elem, None)],
    )
    data: bytes = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    return data


@pytest.fixture(scope="module")
def backend() -> OnnxRuntimeBackend:
    b = OnnxRuntimeBackend()
    b.apply_switches(deterministic=False)
    return b


def run(backend: OnnxRuntimeBackend, model: Any, x: np.ndarray, mode: str = "opt:all") -> dict[str, np.ndarray]:
    native = backend.to_native(x)
    call = backend.prepare(model, VariantSpec("cpu", x.dtype.name, mode, is_module=True), [native])
    out, _ = backend.run(call, [native], device="cpu", seed=0)
    return backend.outputs_to_numpy(out)


@pytest.mark.parametrize("mode", list(OPTIMIZATION_LEVELS))
def test_helper_model_runs_at_every_optimization_level(backend: OnnxRuntimeBackend, mode: str) -> None:
    x = np.random.default_rng(0).standard_normal((5, 4)).astype("float32")
    out = run(backend, dense_relu(), x, mode)
    assert list(out) == ["y"]
    np.testing.assert_allclose(out["y"], np.maximum(x @ W + B, 0), rtol=1e-6, atol=1e-6)
    info = backend.run_info()
    assert info["onnxruntime.providers"] == ["CPUExecutionProvider"]
    assert info["onnxruntime.graph_optimization_level"] == OPTIMIZATION_LEVELS[mode]
    assert info["onnx.opset"] == 17
    assert info["onnxruntime.inputs"] == ["x"]
    json.dumps(info)


def test_model_bytes_and_paths_are_accepted(backend: OnnxRuntimeBackend, tmp_path: Path) -> None:
    x = np.ones((2, 4), dtype="float32")
    expected = run(backend, dense_relu(), x)["y"]
    assert np.array_equal(run(backend, dense_relu().SerializeToString(), x)["y"], expected)
    onnx.save(dense_relu(), tmp_path / "model.onnx")
    assert np.array_equal(run(backend, tmp_path / "model.onnx", x)["y"], expected)


@pytest.mark.parametrize("name", [d for d in ALL_DTYPES if not d.startswith("complex")])
def test_round_trip_through_a_session_is_bit_exact(
    backend: OnnxRuntimeBackend, name: str, sample: Callable[..., np.ndarray]
) -> None:
    array = sample(name)
    native = backend.to_native(array)
    assert backend.to_numpy(native).tobytes() == array.tobytes()
    # Through a real session too: bfloat16 travels as labelled uint16 bits both ways.
    session, _ = create_session(identity(name), device="cpu")
    (back,) = run_session(session, [native])
    assert back.dtype == array.dtype
    assert back.tobytes() == array.tobytes()


def test_supports_says_what_the_cpu_provider_lacks(backend: OnnxRuntimeBackend) -> None:
    assert backend.supports(VariantSpec("cpu", "float32", "opt:all", is_module=True)) == (True, "")
    assert backend.supports(VariantSpec("cpu", "bfloat16", "opt:all", is_module=True)) == (
        False,
        "onnxruntime's CPU provider has no bfloat16 kernel for Add",
    )
    assert backend.supports(VariantSpec("cpu", "complex64", "opt:all", is_module=True)) == (False, "onnxruntime takes no complex64 arrays")
    if "cuda" not in backend.devices():
        assert backend.supports(VariantSpec("cuda", "float32", "opt:all", is_module=True)) == (False, "onnxruntime sees no cuda device here")


def test_a_model_of_another_dtype_is_unsupported_not_an_error(backend: OnnxRuntimeBackend) -> None:
    with pytest.raises(UnsupportedVariant) as info:
        run(backend, dense_relu(), np.ones((2, 4), dtype="float16"))
    assert info.value.reason == "the model's input 'x' is float32, not float16"


def test_a_missing_kernel_is_unsupported(backend: OnnxRuntimeBackend) -> None:
    graph = helper.make_graph(
        [helper.make_node("Erf", ["x"], ["y"])],
        "erf",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, None)],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedVariant) as info:
        run(backend, model, np.ones(3))
    assert info.value.reason == "onnxruntime's CPU provider has no kernel for Erf(13) at this model's dtype"


def test_input_count_must_match(backend: OnnxRuntimeBackend) -> None:
    x = backend.to_native(np.ones((2, 4), dtype="float32"))
    with pytest.raises(CaseError, match=r"the model takes 1 inputs \(x\), the case gives 2"):
        backend.prepare(dense_relu(), VariantSpec("cpu", "float32", "opt:all", is_module=True), [x, x])


def test_deterministic_compute_is_used_and_recorded() -> None:
    backend = OnnxRuntimeBackend()
    assert backend.apply_switches(deterministic=True) == {"onnxruntime.use_deterministic_compute": True}
    run(backend, dense_relu(), np.ones((1, 4), dtype="float32"))
    assert backend.run_info()["onnxruntime.use_deterministic_compute"] is True


def test_fingerprint(backend: OnnxRuntimeBackend) -> None:
    import onnxruntime

    fp = backend.fingerprint()
    assert fp["onnxruntime.version"] == onnxruntime.__version__
    assert "CPUExecutionProvider" in fp["onnxruntime.available_providers"]
    assert fp["onnx.version"] == onnx.__version__
    assert json.loads(json.dumps(fp)) == fp


# -- external data ----------------------------------------------------------------------------------


def save_external(folder: Path) -> Path:
    """dense_relu saved with its initializers in weights.bin beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(
        dense_relu(),
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    return path


def relocate(path: Path, location: str) -> None:
    """Point every external tensor of the model file at ``location``."""
    model = onnx.load(path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, path)


def test_external_data_inside_the_folder_loads_and_runs(backend: OnnxRuntimeBackend, tmp_path: Path) -> None:
    path = save_external(tmp_path / "m")
    model = load_model_safely(path)
    x = np.ones((2, 4), dtype="float32")
    np.testing.assert_allclose(run(backend, model, x)["y"], np.maximum(x @ W + B, 0), rtol=1e-6)


def test_external_data_leaving_the_folder_is_refused(tmp_path: Path) -> None:
    path = save_external(tmp_path / "m")
    (tmp_path / "m" / "weights.bin").rename(tmp_path / "outside.bin")
    relocate(path, "../outside.bin")
    with pytest.raises(UsageError) as info:
        load_model_safely(path)
    assert str(info.value) == "tensor 'W' reads external data from '../outside.bin', which leaves the model's folder"


def test_absolute_external_data_path_is_refused(tmp_path: Path) -> None:
    path = save_external(tmp_path / "m")
    relocate(path, str(tmp_path / "m" / "weights.bin"))
    with pytest.raises(UsageError, match="tensor 'W' reads external data from absolute path"):
        load_model_safely(path)


def test_symlink_leaving_the_folder_is_refused(tmp_path: Path) -> None:
    path = save_external(tmp_path / "m")
    (tmp_path / "m" / "weights.bin").rename(tmp_path / "outside.bin")
    os.symlink(tmp_path / "outside.bin", tmp_path / "m" / "weights.bin")
    with pytest.raises(UsageError, match="which leaves the model's folder"):
        load_model_safely(path)


def test_missing_external_file_is_a_usage_error(tmp_path: Path) -> None:
    path = save_external(tmp_path / "m")
    (tmp_path / "m" / "weights.bin").unlink()
    with pytest.raises(UsageError, match=r"tensor 'W' reads external data from 'weights\.bin', which does not exist"):
        load_model_safely(path)
    with pytest.raises(UsageError, match="does not exist"):
        load_model_safely(tmp_path / "nothing.onnx")


def test_a_built_model_with_unloaded_external_data_is_refused(backend: OnnxRuntimeBackend, tmp_path: Path) -> None:
    # ONNX Runtime would resolve these locations itself, outside any check.
    unloaded = onnx.load(save_external(tmp_path / "m"), load_external_data=False)
    with pytest.raises(UsageError, match="tensor 'W' of the model still refers to external data"):
        run(backend, unloaded, np.ones((1, 4), dtype="float32"))


# -- framework noise ------------------------------------------------------------------------------


def test_every_session_the_backend_opens_logs_errors_only(
    backend: OnnxRuntimeBackend, monkeypatch: pytest.MonkeyPatch, session_severities: list[int]
) -> None:

    from detharness.backends import onnxruntime_backend

    severities = session_severities
    monkeypatch.setattr(onnxruntime_backend, "_PROBED", {})  # the bfloat16 probe opens sessions too
    run(backend, dense_relu(), np.ones((1, 4), dtype="float32"))
    backend.supports(VariantSpec("cpu", "bfloat16", "opt:all", is_module=True))
    create_session(identity("float32"), device="cpu")
    assert len(severities) >= 3
    assert set(severities) == {onnxruntime_backend.LOG_SEVERITY} == {3}


def test_an_old_opset_model_runs_without_a_word_on_stderr() -> None:
    # At its default severity ONNX Runtime writes "only *guarantees* support for models stamped
    # with opset version 7 or above" and transpose-optimizer warnings for this model.
    code = """
        import json
        import numpy as np
        from onnx import TensorProto, helper
        from detharness.backends import VariantSpec, get_backend
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "old",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)], ir_version=3)
        backend = get_backend("onnxruntime")
        backend.apply_switches(False)
        x = np.array([-1.0, 2.0], dtype="float32")
        call = backend.prepare(model, VariantSpec("cpu", "float32", "opt:all", is_module=True), [x])
        print(json.dumps(backend.outputs_to_numpy(call(x))["y"].tolist()))
        """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [0.0, 2.0]
    assert done.stderr == ""
