"""The torch backend: transfers, eager and ONNX modes, switches and fingerprint, on real torch."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from detharness.backends import UnsupportedVariant, VariantSpec
from detharness.backends.torch_backend import TorchBackend
from detharness.dtypes import ALL_DTYPES, numpy_dtype
from tests.backends.conftest import run_python

pytest.importorskip("torch")
import torch


class TwoHeads(torch.nn.Module):
    """A small MLP with a dict output, built from parameters as a case's module builder would."""

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(8, 16)
        self.out = torch.nn.Linear(16, 4)
        with torch.no_grad():
            self.hidden.weight.copy_(params["w1"])
            self.hidden.bias.copy_(params["b1"])
            self.out.weight.copy_(params["w2"])
            self.out.bias.copy_(params["b2"])

    def forward(self, x: Any) -> dict[str, Any]:
        h = torch.nn.functional.gelu(self.hidden(x))
        logits = self.out(h)
        return {"logits": logits, "probs": torch.softmax(logits, -1)}


@pytest.fixture(scope="module")
def backend() -> TorchBackend:
    b = TorchBackend()
    b.apply_switches(deterministic=False)
    return b


def params(b: TorchBackend) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    return {
        "w1": b.to_native(rng.standard_normal((16, 8)).astype("float32") * 0.3),
        "w2": b.to_native(rng.standard_normal((4, 16)).astype("float32") * 0.3),
        "b1": b.to_native(rng.standard_normal(16).astype("float32") * 0.1),
        "b2": b.to_native(rng.standard_normal(4).astype("float32") * 0.1),
    }


@pytest.mark.parametrize("name", ALL_DTYPES)
def test_round_trip_is_bit_exact(backend: TorchBackend, name: str, sample: Callable[..., np.ndarray]) -> None:
    array = sample(name)
    native = backend.to_native(array, "cpu")
    assert isinstance(native, torch.Tensor)
    assert str(native.dtype) == f"torch.{name}"
    back = backend.to_numpy(native)
    assert back.dtype == array.dtype
    assert back.tobytes() == array.tobytes()


def test_every_bfloat16_and_float16_bit_pattern_survives(backend: TorchBackend) -> None:
    bits = np.arange(2**16, dtype=np.uint16)
    for name in ("bfloat16", "float16"):
        back = backend.to_numpy(backend.to_native(bits.view(numpy_dtype(name))))
        assert np.array_equal(back.view(np.uint16), bits), name


def test_inputs_are_copies(backend: TorchBackend) -> None:
    array = np.zeros(3, dtype="float32")
    native = backend.to_native(array)
    native += 1
    assert array.tolist() == [0.0, 0.0, 0.0]


def test_plain_function_in_eager_mode(backend: TorchBackend) -> None:
    call = backend.prepare(lambda x: {"y": torch.tanh(x)}, VariantSpec("cpu", "float32", "eager"))
    x = backend.to_native(np.linspace(-2, 2, 5, dtype="float32"))
    out, _ = backend.run(call, [x], device="cpu", seed=0)
    assert out["y"].is_inference()
    np.testing.assert_array_equal(backend.outputs_to_numpy(out)["y"], np.tanh(np.linspace(-2, 2, 5, dtype="float32")))
    assert backend.run_info() == {"torch.mode": "eager", "torch.device": "cpu", "torch.inference_mode": True}


def eager_and_onnx(
    backend: TorchBackend, mode: str, dtype: str = "float32"
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    x = backend.to_native(np.random.default_rng(2).standard_normal((5, 8)).astype(dtype))
    results = []
    for m in ("eager", mode):
        module = TwoHeads(params(backend))
        call = backend.prepare(module, VariantSpec("cpu", dtype, m, is_module=True), [x])
        out, _ = backend.run(call, [x], device="cpu", seed=0)
        results.append(backend.outputs_to_numpy(out))
    return results[0], results[1]


@pytest.mark.parametrize(("mode", "exporter"), [("onnx", "dynamo"), ("onnx:torchscript", "torchscript")])
def test_module_through_onnx_matches_eager(backend: TorchBackend, mode: str, exporter: str) -> None:
    eager, onnx = eager_and_onnx(backend, mode)
    assert list(onnx) == ["logits", "probs"]
    for name in eager:
        assert onnx[name].dtype == np.float32
        np.testing.assert_allclose(onnx[name], eager[name], rtol=1e-5, atol=1e-6)
    info = backend.run_info()
    assert info["torch.onnx.exporter"] == exporter
    assert info["torch.mode"] == mode
    assert isinstance(info["onnx.opset"], int) and info["onnx.opset"] >= 17
    assert info["onnxruntime.providers"] == ["CPUExecutionProvider"]
    assert info["onnxruntime.graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert info["onnxruntime.use_deterministic_compute"] is False
    json.dumps(info)


def test_float16_module_through_onnx(backend: TorchBackend) -> None:
    eager, onnx = eager_and_onnx(backend, "onnx:torchscript", dtype="float16")
    assert onnx["logits"].dtype == np.float16
    np.testing.assert_allclose(onnx["logits"].astype("float32"), eager["logits"].astype("float32"), atol=1e-2)


def test_onnx_mode_supports_and_refuses_truthfully(backend: TorchBackend) -> None:
    assert backend.supports(VariantSpec("cpu", "float32", "onnx", is_module=True)) == (True, "")
    assert backend.supports(VariantSpec("cpu", "bfloat16", "onnx", is_module=True)) == (
        False,
        "onnxruntime's CPU provider has no bfloat16 kernel for Add",
    )
    assert backend.supports(VariantSpec("cpu", "complex64", "onnx", is_module=True)) == (False, "onnxruntime has no complex tensors")
    assert backend.supports(VariantSpec("cpu", "float32", "onnx", is_module=False)) == (
        False,
        "the onnx mode needs a module builder, and this implementation is a plain function",
    )
    if not torch.cuda.is_available():
        assert backend.supports(VariantSpec("cuda", "float32", "eager")) == (False, "torch sees no cuda device here")


def test_onnx_mode_reports_a_missing_kernel_as_unsupported(backend: TorchBackend) -> None:
    conv = torch.nn.Conv2d(2, 3, 3)
    x = backend.to_native(np.ones((1, 2, 5, 5), dtype="float64"))
    with pytest.raises(UnsupportedVariant) as info:
        backend.prepare(conv, VariantSpec("cpu", "float64", "onnx:torchscript", is_module=True), [x])
    assert info.value.reason == "onnxruntime's CPU provider has no kernel for Conv(11) at this model's dtype"


def test_onnx_mode_needs_a_module(backend: TorchBackend) -> None:
    with pytest.raises(UnsupportedVariant, match=r"exports a torch\.nn\.Module; the builder returned function"):
        backend.prepare(lambda x: x, VariantSpec("cpu", "float32", "onnx", is_module=True))


def test_eager_module_is_cast_to_the_variant_dtype(backend: TorchBackend) -> None:
    x = backend.to_native(np.ones((2, 8), dtype="float64"))
    call = backend.prepare(TwoHeads(params(backend)), VariantSpec("cpu", "float64", "eager", is_module=True), [x])
    out = backend.outputs_to_numpy(call(x))
    assert out["probs"].dtype == np.float64


def test_seed_makes_torch_random_repeat(backend: TorchBackend) -> None:
    call = backend.prepare(lambda: torch.randn(3), VariantSpec("cpu", "float32", "eager"))
    first, _ = backend.run(call, [], device="cpu", seed=0)
    second, _ = backend.run(call, [], device="cpu", seed=0)
    assert backend.to_numpy(first).tolist() == backend.to_numpy(second).tolist()
    # The stream the project's notes quote for seed 0.
    np.testing.assert_allclose(backend.to_numpy(first), [1.5410, -0.2934, -2.1788], atol=1e-4)


def test_fingerprint_keys_are_present_and_serializable(backend: TorchBackend) -> None:
    fp = backend.fingerprint()
    for key in (
        "torch.version",
        "torch.git_version",
        "torch.cpu_capability",
        "torch.num_threads",
        "torch.cuda.version",
        "torch.cudnn.version",
        "torch.mkldnn.available",
        "torch.mkldnn.version",
    ):
        assert key in fp, key
    assert fp["torch.version"] == torch.__version__
    assert fp["torch.cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert json.loads(json.dumps(fp)) == fp
    if torch.cuda.is_available():
        assert {"gpu.name", "gpu.capability", "gpu.sm_count", "gpu.memory"} <= set(fp)


def test_switches_are_recorded_without_changing_defaults(backend: TorchBackend) -> None:
    switches = backend.switches()
    assert switches["torch.deterministic_algorithms"] is torch.are_deterministic_algorithms_enabled() is False
    assert switches["torch.num_threads"] == torch.get_num_threads()
    json.dumps(switches)


@pytest.fixture(scope="module")
def switched() -> dict[str, Any]:
    """What apply_switches did in one fresh interpreter (torch's flags are process-wide), started
    with CUBLAS_WORKSPACE_CONFIG unset: the switches before and after deterministic mode, then the
    variable after deterministic mode again with it empty (counts as unset) and with a user's value.
    One interpreter (one import of torch) for the tests below."""
    return run_python(
        """
        import json, os, torch
        from detharness.backends import get_backend
        b = get_backend("torch")
        before = b.apply_switches(deterministic=False)
        after = b.apply_switches(deterministic=True)
        found = {"before": before, "after": after, "flag": torch.are_deterministic_algorithms_enabled(),
                 "env": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}
        for name, value in (("empty", ""), ("chosen", ":16:8")):
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = value
            found[name] = b.apply_switches(deterministic=True)["torch.cublas_workspace_config"]
        print(json.dumps(found))
        """,
        unset=("CUBLAS_WORKSPACE_CONFIG",),
    )


def test_apply_switches_deterministic_flips_torch_flags(switched: dict[str, Any]) -> None:
    found = switched
    assert found["env"] == ":4096:8"
    before, after = found["before"], found["after"]
    assert before["torch.deterministic_algorithms"] is False
    assert found["flag"] is True
    assert after["torch.deterministic_algorithms"] is True
    assert after["torch.cudnn.deterministic"] is True
    assert after["torch.cudnn.benchmark"] is False
    assert after["torch.cuda.matmul.allow_tf32"] is False
    assert after["torch.cudnn.allow_tf32"] is False
    assert after["torch.float32_matmul_precision"] == "highest"
    assert after["torch.cudnn.conv.fp32_precision"] == "ieee"
    assert after["torch.num_threads"] >= 1


def test_apply_switches_sets_cublas_workspace_config_when_unset(switched: dict[str, Any]) -> None:
    assert switched["after"]["torch.cublas_workspace_config"] == ":4096:8"
    assert switched["empty"] == ":4096:8"  # an empty value counts as unset, as it does for cuBLAS
    # A value the user set is kept.
    assert switched["chosen"] == ":16:8"


def test_cpu_capability_records_what_torch_really_uses(
    in_subprocess: Callable[..., Any], backend: TorchBackend
) -> None:
    code = """
        import json
        from detharness.backends import get_backend
        print(json.dumps(get_backend("torch").fingerprint()["torch.cpu_capability"]))
        """
    forced = in_subprocess(code, env={"ATEN_CPU_CAPABILITY": "default"})
    assert forced == "DEFAULT"
    normal = backend.fingerprint()["torch.cpu_capability"]
    if normal != "DEFAULT":
        assert forced != normal


def test_export_onnx_pins_the_opset_and_restores_the_loggers(backend: TorchBackend) -> None:
    import logging

    import onnx

    from detharness.backends.onnx_model import model_opset
    from detharness.backends.torch_backend import quiet_export

    onnx_logger = logging.getLogger("torch.onnx")
    before = onnx_logger.level
    x = backend.to_native(np.ones((2, 8), dtype="float32"))
    module = TwoHeads(params(backend)).eval()
    data = backend.export_onnx(module, (x,), "torchscript", opset=18)
    assert model_opset(onnx.load_from_string(data)) == 18
    assert backend.onnx_opset is None  # the backend's own default is left alone
    assert onnx_logger.level == before
    with quiet_export():
        assert onnx_logger.level == logging.ERROR
    assert onnx_logger.level == before
    with pytest.raises(ValueError, match="unknown ONNX exporter 'tflite'"):
        backend.export_onnx(module, (x,), "tflite")


# The threaded part: warning filters are one per process, so two threads' quiet_export blocks can
# let a torch FutureWarning through while the other restores them.
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_reused_onnx_registry_gives_the_bytes_a_fresh_one_gives(backend: TorchBackend) -> None:
    """The dynamo exporter's op registry is built once per process and opset, not once per export:
    the exported bytes equal those of a plain ``torch.onnx.export`` (which builds its own), for a
    dict-output MLP, a Conv+BatchNorm stack (folded) and an LSTM; one registry per opset, shared
    only inside the block, and torch's own builder is put back after it."""
    pytest.importorskip("onnxscript")
    from torch.onnx._internal.exporter import _registration

    from detharness.backends.torch_backend import quiet_export, reused_onnx_registry

    torch.manual_seed(3)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    with torch.no_grad():
        conv[1].running_mean.uniform_(-1, 1)
        conv[1].running_var.uniform_(0.5, 2)
    models = [
        (TwoHeads(params(backend)).eval(), (torch.ones(2, 8),)),
        (conv, (torch.randn(1, 3, 6, 6),)),
        (torch.nn.LSTM(4, 5, batch_first=True).eval(), (torch.randn(2, 3, 4),)),
    ]
    for module, inputs in models:
        with quiet_export():
            fresh = torch.onnx.export(module, inputs, dynamo=True, opset_version=18, verbose=False)
        assert fresh is not None
        reused = backend.export_onnx(module, inputs, "dynamo", opset=18)
        assert reused == fresh.model_proto.SerializeToString()
    original = vars(_registration.ONNXRegistry)["from_torchlib"]
    with reused_onnx_registry(torch):
        first = _registration.ONNXRegistry.from_torchlib(opset_version=18)
        assert _registration.ONNXRegistry.from_torchlib(opset_version=18) is first
        assert _registration.ONNXRegistry.from_torchlib(opset_version=20) is not first
    assert vars(_registration.ONNXRegistry)["from_torchlib"] is original
    assert _registration.ONNXRegistry.from_torchlib(opset_version=18) is not first
    # Exports from two threads at once leave torch's own builder in place.
    import threading

    module, inputs = models[0]
    threads = [threading.Thread(target=backend.export_onnx, args=(module, inputs, "dynamo")) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert vars(_registration.ONNXRegistry)["from_torchlib"] is original


def test_fingerprint_records_the_onnx_stack_its_onnx_modes_load_without_importing_it(backend: TorchBackend) -> None:
    """ONNX Runtime run only through torch's ``onnx`` mode is still in the environment: a pinned
    onnxruntime changes the environment id, and the same keys as the onnxruntime backend's merge."""
    import importlib.metadata
    import subprocess
    import sys

    from detharness import environment
    from detharness.backends.torch_backend import onnx_stack_versions

    pytest.importorskip("onnxruntime")
    fp = backend.fingerprint()
    assert fp["onnxruntime.version"] == importlib.metadata.version("onnxruntime")
    assert fp["onnx.version"] == importlib.metadata.version("onnx")
    assert fp["onnxscript.version"] == importlib.metadata.version("onnxscript")
    # The onnxruntime backend records the same values under the same keys: merging is no conflict.
    from detharness.backends.onnxruntime_backend import OnnxRuntimeBackend

    ort = OnnxRuntimeBackend().fingerprint()
    shared = set(fp) & set(ort)
    assert {"onnxruntime.version", "onnx.version"} <= shared
    assert {k: fp[k] for k in shared} == {k: ort[k] for k in shared}
    assert environment.merge(fp, ort) == environment.merge(ort, fp)  # whichever backend's worker answers first
    # Read from package metadata: nothing is imported for it (a fresh process still lacks onnxruntime).
    code = ("import sys; from detharness.backends.torch_backend import onnx_stack_versions as f; v = f(); "
            "print(v['onnxruntime.version'], 'onnxruntime' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == [fp["onnxruntime.version"], "False"]
    assert set(onnx_stack_versions()) == {"onnx.version", "onnxscript.version", "onnxruntime.version"}


def test_a_missing_onnx_stack_is_left_out_and_another_onnxruntime_wheel_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    from detharness.backends import torch_backend

    installed = {"onnxruntime-gpu": "1.31.1"}

    def version(name: str) -> str:
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert torch_backend.onnx_stack_versions() == {"onnxruntime.version": "1.31.1"}
