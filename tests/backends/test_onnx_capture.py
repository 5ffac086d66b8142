"""Layers of ONNX models: exposed node outputs, ONNX Runtime's fusions, torch module scopes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detharness.backends.onnx_capture import (
    NAME_SCOPES_KEY,
    STACK_TRACE_KEY,
    capture,
    expose,
    fused,
    fusion_changed,
    module_outputs,
    strip_stack_traces,
    torch_scopes,
)
from detharness.backends.onnxruntime_backend import run_session, session_options

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]

# Multiples of 1/8 with small integer parts: x @ W is exact in float32 whatever the summation order,
# so ONNX Runtime's MatMul and numpy's agree bitwise.
RNG = np.random.default_rng(0)
X = (RNG.integers(-16, 16, size=(6, 8)) / 8).astype(np.float32)
W = (RNG.integers(-16, 16, size=(8, 5)) / 8).astype(np.float32)
B = (RNG.integers(-16, 16, size=5) / 8).astype(np.float32)


def matmul_chain() -> onnx.ModelProto:
    """y = softmax(relu(x @ W + b)): MatMul -> Add -> Relu -> Softmax."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["z"]),
            helper.make_node("Relu", ["z"], ["r"]),
            helper.make_node("Softmax", ["r"], ["y"], axis=-1),
        ],
        "matmul_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 5])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_relu() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "bias"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "conv_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [
            numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bias"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def factory(level: str) -> Callable[..., Any]:
    """Sessions as the backend makes them (its SessionOptions, CPU provider), optionally saving the optimized graph."""

    def make(data: bytes, optimized_path: str | None = None) -> Any:
        options = session_options(level)
        if optimized_path is not None:
            options.optimized_model_filepath = optimized_path
        return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])

    return make


def softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# --- expose and capture -------------------------------------------------------------------------


def test_expose_adds_intermediates_in_node_order_with_inferred_types() -> None:
    model = matmul_chain()
    exposed, names = expose(model)
    assert names == ["xw", "z", "r"]
    assert [o.name for o in exposed.graph.output] == ["y", "xw", "z", "r"]
    for info in exposed.graph.output[1:]:
        assert info.type.tensor_type.elem_type == TensorProto.FLOAT
        assert [d.dim_value for d in info.type.tensor_type.shape.dim] == [6, 5]
    assert [o.name for o in model.graph.output] == ["y"]  # the model itself is untouched


def test_expose_skips_graph_outputs_and_omitted_outputs_and_keeps_int_types() -> None:
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Dropout", ["r"], ["d", ""]),
            helper.make_node("Shape", ["d"], ["s"]),
            helper.make_node("Cast", ["s"], ["y"], to=TensorProto.FLOAT),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("r", TensorProto.FLOAT, None),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    exposed, names = expose(model)
    assert names == ["d", "s"]
    types = {o.name: o.type.tensor_type.elem_type for o in exposed.graph.output}
    assert types["s"] == TensorProto.INT64  # the inferred type, never a float fallback
    got = capture(model, {"x": X[:2, :3]}, make_session=factory("ORT_ENABLE_ALL"))
    assert [name for name, _ in got.layers] == ["r", "d", "s", "y"]
    assert dict(got.layers)["s"].tolist() == [2, 3]


def test_ort_accepts_typeless_outputs() -> None:
    """What expose relies on where shape inference finds no type: ONNX Runtime fills it in."""
    model = matmul_chain()
    model.graph.output.append(onnx.ValueInfoProto(name="z"))
    session = factory("ORT_ENABLE_ALL")(model.SerializeToString())
    assert {o.name: o.type for o in session.get_outputs()}["z"] == "tensor(float)"


@pytest.mark.parametrize("level", ["ORT_DISABLE_ALL", "ORT_ENABLE_ALL"])
def test_capture_layers_equal_numpy_steps_and_final_output_unchanged(level: str) -> None:
    model = matmul_chain()
    make = factory(level)
    got = capture(model, {"x": X}, make_session=make)
    assert [name for name, _ in got.layers] == ["xw", "z", "r", "y"]
    layers = dict(got.layers)
    np.testing.assert_array_equal(layers["xw"], X @ W)  # exact data: bitwise
    np.testing.assert_array_equal(layers["z"], layers["xw"] + B)
    np.testing.assert_array_equal(layers["r"], np.maximum(layers["z"], 0))
    np.testing.assert_allclose(layers["y"], softmax(layers["r"]), rtol=1e-6, atol=1e-7)
    # The final output is bitwise the unexposed session's, even at ORT_ENABLE_ALL where the
    # unexposed graph runs FusedGemm (measured).
    (plain,) = run_session(make(model.SerializeToString()), [X])
    assert layers["y"].tobytes() == plain.tobytes()
    assert got.outputs_match is True
    assert got.fusion_changed is None
    assert got.notes == []


def test_capture_notes_outputs_it_does_not_reproduce() -> None:
    model = matmul_chain()
    (plain,) = run_session(factory("ORT_ENABLE_ALL")(model.SerializeToString()), [X])
    nudged = plain.copy()
    nudged.flat[0] = np.nextafter(nudged.flat[0], np.float32(2))
    got = capture(model, {"x": X}, make_session=factory("ORT_ENABLE_ALL"), reference={"y": nudged})
    assert got.outputs_match is False
    assert any("approximate" in note and "y" in note for note in got.notes)


def test_capture_refuses_missing_feeds() -> None:
    from detharness.errors import CaseError

    with pytest.raises(CaseError, match="'x'"):
        capture(matmul_chain(), {}, make_session=factory("ORT_ENABLE_ALL"))


# --- fusions ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("ORT_DISABLE_ALL", None),
        ("ORT_ENABLE_EXTENDED", "FusedConv: 1 -> 0"),
        # NCHWc layout: the Relu is absorbed by nchwc.Conv; exposed it runs on its own.
        ("ORT_ENABLE_ALL", "Relu: 0 -> 1"),
    ],
)
def test_fusion_changed_conv_relu(level: str, expected: str | None) -> None:
    changed, note = fusion_changed(conv_relu(), factory(level))
    assert changed is (expected is not None)
    if expected is None:
        assert "unchanged" in note
    else:
        assert expected in note and note.startswith("exposing every node output changed")


@pytest.mark.parametrize(
    ("level", "expected"),
    [("ORT_DISABLE_ALL", None), ("ORT_ENABLE_BASIC", "Gemm: 1 -> 0"), ("ORT_ENABLE_ALL", "FusedGemm: 1 -> 0")],
)
def test_fusion_changed_matmul_chain(level: str, expected: str | None) -> None:
    # Measured: BASIC fuses MatMul+Add into Gemm, EXTENDED and up fold the Relu in (FusedGemm);
    # exposed, all four nodes stay.
    changed, note = fusion_changed(matmul_chain(), factory(level))
    assert changed is (expected is not None)
    if expected is not None:
        assert expected in note and "MatMul: 0 -> 1" in note and "Add: 0 -> 1" in note


def test_capture_reports_a_blocked_fusion() -> None:
    model = conv_relu()
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    make = factory("ORT_ENABLE_EXTENDED")
    got = capture(model, {"x": x}, make_session=make, make_session_with_optimized_path=make)
    assert got.fusion_changed is True
    assert any("FusedConv: 1 -> 0" in note for note in got.notes)
    assert [name for name, _ in got.layers] == ["c", "y"]
    np.testing.assert_array_equal(dict(got.layers)["y"], np.maximum(dict(got.layers)["c"], 0))
    assert got.outputs_match is not any("approximate" in note for note in got.notes)


@pytest.mark.parametrize("reference", [False, True])
def test_a_capture_that_compares_fusions_makes_two_sessions_and_the_same_layers(reference: bool) -> None:
    """The sessions that save the optimized graphs are the ones that run: two sessions, not four,
    and the layers, notes and output check of a capture without the fusion comparison."""
    model = conv_relu()
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    make = factory("ORT_ENABLE_EXTENDED")
    made: list[str | None] = []

    def counting(data: bytes, path: str | None) -> Any:
        made.append(path)
        return make(data, path)

    given = {"y": run_session(make(model.SerializeToString()), [x])[0]} if reference else None
    plain = capture(model, {"x": x}, make_session=make, reference=given)
    got = capture(model, {"x": x}, make_session=lambda data: counting(data, None),
                  make_session_with_optimized_path=counting, reference=given)
    assert len(made) == 2 and all(path is not None for path in made)
    assert [name for name, _ in got.layers] == [name for name, _ in plain.layers]
    assert all(a.tobytes() == b.tobytes() for (_, a), (_, b) in zip(got.layers, plain.layers, strict=True))
    assert got.outputs_match is plain.outputs_match is True
    assert got.fusion_changed is True and got.notes == [*plain.notes, fusion_changed(model, make)[1]]


def test_module_imports_without_onnx_onnxruntime_or_torch(in_subprocess: Callable[..., Any]) -> None:
    result = in_subprocess(
        """
        import json, sys
        for name in ("onnx", "onnxruntime", "torch"):
            sys.modules[name] = None
        import detharness.backends.onnx_capture as m
        print(json.dumps(m.fused(["a", "b.c"], {"o": "b.c"})))
        """
    )
    assert result == ["a"]


# --- torch exports ------------------------------------------------------------------------------

torch_cases = pytest.mark.skipif(sys.platform == "win32", reason="the dynamo exporter is slow there")


def _export(module: Any, inputs: tuple[Any, ...]) -> onnx.ModelProto:
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from detharness.backends.torch_backend import TorchBackend

    return onnx.load_from_string(TorchBackend().export_onnx(module.eval(), inputs))


def _eager_layers(module: Any, x: Any) -> dict[str, np.ndarray]:
    """Forward-hook outputs by named_modules() name, as torch eager intermediates are recorded."""
    import torch

    found: dict[str, np.ndarray] = {}
    handles = [
        sub.register_forward_hook(lambda _m, _i, out, name=name: found.__setitem__(name, out.detach().numpy()))
        for name, sub in module.named_modules()
    ]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for handle in handles:
            handle.remove()
    return found


@pytest.fixture(scope="module")
def exports() -> dict[str, Any]:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class Inner(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)
            self.act = torch.nn.GELU()

        def forward(self, x: Any) -> Any:
            return self.act(self.fc(x))

    class Nested(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = Inner()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4), Inner()])
            self.head = torch.nn.Linear(4, 3)

        def forward(self, x: Any) -> Any:
            x = self.block(x)
            for layer in self.layers:
                x = layer(x)
            return self.head(x).softmax(-1)

    sequential = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    nested = Nested().eval()
    conv_bn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    with torch.no_grad():  # non-trivial running statistics, so the fold is visible in the numbers
        conv_bn[1].running_mean.uniform_(-1, 1)
        conv_bn[1].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 4)
    image = torch.randn(1, 3, 8, 8)
    return {
        "x": x,
        "image": image,
        "sequential": (sequential, _export(sequential, (x,))),
        "nested": (nested, _export(nested, (x,))),
        "conv_bn": (conv_bn, _export(conv_bn, (image,))),
    }


@torch_cases
def test_name_scopes_metadata_format(exports: dict[str, Any]) -> None:
    _, model = exports["nested"]
    props = {p.key: p.value for p in model.graph.node[0].metadata_props}
    assert props[NAME_SCOPES_KEY] == "['', 'block', 'block.fc', 'linear']"
    assert STACK_TRACE_KEY in props


@torch_cases
def test_torch_scopes_of_a_sequential(exports: dict[str, Any]) -> None:
    module, model = exports["sequential"]
    scopes = torch_scopes(model)
    assert list(scopes.values()) == ["0", "1", "2"]
    outputs = module_outputs(model)
    final = model.graph.output[0].name
    assert list(outputs) == ["0", "1", "2", ""]
    assert outputs["2"] == outputs[""] == final
    assert fused([name for name, _ in module.named_modules()], scopes) == []
    # Paired by module name, the ONNX layers match torch eager's forward hooks.
    eager = _eager_layers(module, exports["x"])
    got = dict(
        capture(model, {model.graph.input[0].name: exports["x"].numpy()}, make_session=factory("ORT_ENABLE_ALL")).layers
    )
    for name, output in outputs.items():
        np.testing.assert_allclose(got[output], eager[name], rtol=1e-5, atol=1e-6)


@torch_cases
def test_torch_scopes_of_nested_modules(exports: dict[str, Any]) -> None:
    module, model = exports["nested"]
    scopes = torch_scopes(model)
    assert list(scopes.values()) == ["block.fc", "block.act", "layers.0", "layers.1.fc", "layers.1.act", "head", ""]
    outputs = module_outputs(model)
    assert list(outputs) == [
        "block.fc",
        "block.act",
        "block",
        "layers.0",
        "layers.1.fc",
        "layers.1.act",
        "layers.1",
        "head",
        "",
    ]
    assert outputs["block"] == outputs["block.act"]
    # Containers (the ModuleList "layers", never called itself) are present through their children.
    assert fused([name for name, _ in module.named_modules()], scopes) == []
    eager = _eager_layers(module, exports["x"])
    assert set(outputs) <= set(eager)


@torch_cases
def test_batch_norm_folded_into_conv_is_fused(exports: dict[str, Any]) -> None:
    module, model = exports["conv_bn"]
    # Measured: onnxscript's FuseBatchNormIntoConv leaves one Conv carrying the BatchNorm's scope,
    # so the BatchNorm's output exists (it is the Conv's) and the Conv2d's own does not.
    assert [node.op_type for node in model.graph.node] == ["Conv", "Relu"]
    scopes = torch_scopes(model)
    assert list(scopes.values()) == ["1", "2"]
    names = [name for name, _ in module.named_modules() if name]
    assert fused(names, scopes) == ["0"]
    eager = _eager_layers(module, exports["image"])
    got = dict(
        capture(
            model, {model.graph.input[0].name: exports["image"].numpy()}, make_session=factory("ORT_ENABLE_ALL")
        ).layers
    )
    outputs = module_outputs(model)
    np.testing.assert_allclose(got[outputs["1"]], eager["1"], rtol=1e-5, atol=1e-5)


@torch_cases
def test_strip_stack_traces(exports: dict[str, Any]) -> None:
    _, model = exports["nested"]
    before = model.SerializeToString()
    assert str(Path(__file__).resolve()).encode() in before  # the stack traces name this file
    stripped = strip_stack_traces(model)
    for node in stripped.graph.node:
        keys = [p.key for p in node.metadata_props]
        assert STACK_TRACE_KEY not in keys and NAME_SCOPES_KEY in keys
    data = stripped.SerializeToString()
    for path in (str(ROOT), sys.prefix, str(Path(onnx.__file__).resolve().parents[1])):
        assert path.encode() not in data
    assert b'File "' not in data
    assert torch_scopes(stripped) == torch_scopes(model)
    assert model.SerializeToString() == before  # the original keeps its traces
