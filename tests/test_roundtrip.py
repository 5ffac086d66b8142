"""The roundtrip check: outputs and parameter hashes before and after a save and a load."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detharness.backends import VariantSpec
from detharness.cases import Case, discover
from detharness.dtypes import numpy_dtype
from detharness.errors import CaseError
from detharness.roundtrip import (
    NumpyJsonFormat,
    NumpySafetensorsFormat,
    RoundtripContext,
    compare_parameters,
    find_format,
    roundtrip_modes,
    run_roundtrip,
    sha256_of,
)
from tests.conftest import run_cli, write_cases

NUDGED_CASES = """
    import numpy as np

    from detharness import case
    from detharness.roundtrip import TorchSafetensorsFormat


    class NudgedOnLoad(TorchSafetensorsFormat):
        '''safetensors, but the load moves one weight by one ulp: a lossy loader in miniature.'''

        name = "safetensors-nudged"

        def load(self, folder, ctx):
            import torch

            module = super().load(folder, ctx)
            with torch.no_grad():
                weight = module[0].weight
                weight[3, 5] = torch.nextafter(weight[3, 5], torch.tensor(float("inf")))
            return module


    c = case("mine/mlp", inputs=lambda rng: {"x": rng.standard_normal((64, 16)).astype("float32")},
             params=lambda rng: {"w": rng.standard_normal((8, 16)).astype("float32"),
                                 "b": rng.standard_normal(8).astype("float32")})

    @c.impl("torch", backend="torch", module=True, modes=("eager",), devices=("cpu",))
    def _(params):
        import torch

        model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Tanh())
        with torch.no_grad():
            model[0].weight.copy_(params["w"])
            model[0].bias.copy_(params["b"])
        return model

    c.roundtrip("torch", ["torch.save", "safetensors", NudgedOnLoad()])
"""

LOSSY_JSON_CASES = """
    import json

    import numpy as np

    from detharness import case
    from detharness.roundtrip import NumpyJsonFormat, roundtrip_modes


    class SixDigitJson(NumpyJsonFormat):
        '''The hand-written exporter of many pipelines: floats with "%.6g".'''

        name = "json-6g"

        def save(self, obj, folder, ctx):
            state = {k: [float("%.6g" % v) for v in np.asarray(a).ravel().tolist()] for k, a in obj.get_state().items()}
            (folder / "state.json").write_text(json.dumps(state))

        def load(self, folder, ctx):
            state = {k: np.asarray(v) for k, v in json.loads((folder / "state.json").read_text()).items()}
            return self.rebuild(state, ctx)


    class Scaler:
        def __init__(self, mean, scale):
            self.mean, self.scale = mean, scale

        def __call__(self, x):
            return {"y": (x - self.mean) / self.scale}

        def get_state(self):
            return {"mean": self.mean, "scale": self.scale}

        @classmethod
        def from_state(cls, state):
            return cls(state["mean"], state["scale"])


    c = case("mine/scaler", params=lambda rng: {"train": rng.standard_normal((100, 4)) * 7 + 3},
             inputs=lambda rng: {"x": rng.standard_normal((50, 4)) * 7 + 3})

    @c.impl("numpy", backend="numpy", module=True, dtypes=("float64",), modes=roundtrip_modes("numpy", ["json"]))
    def _(params):
        return Scaler(params["train"].mean(0), params["train"].std(0))

    c.roundtrip("numpy", [SixDigitJson()])
"""


def _results(stdout: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["variant"], r["output"]): r for r in json.loads(stdout)["results"]}


def test_a_weight_nudged_on_load_names_the_element_and_the_changed_hash(tmp_path: Path) -> None:
    cases = write_cases(tmp_path / "nudged", NUDGED_CASES)
    result = run_cli("run", "--cases", str(cases), "--in-process", "--format", "json", "--out", str(tmp_path / "A"))
    assert result.returncode == 1, result.stdout + result.stderr
    results = _results(result.stdout)
    for fmt in ("torch.save", "safetensors"):
        vid = f"mine/mlp[torch:cpu:float32:roundtrip:{fmt}]"
        assert results[(vid, "y")]["status"] == "identical"
        assert results[(vid, "y")]["check"] == "roundtrip"
        assert results[(vid, "params")]["status"] == "identical"
        assert results[(vid, "params")]["message"].startswith(
            f"IDENTICAL | Output: 'params' | 2 of 2 parameters hashed have the same sha256 before and after the {fmt} round trip")

    vid = "mine/mlp[torch:cpu:float32:roundtrip:safetensors-nudged]"
    weight = results[(vid, "param:0.weight")]
    assert (weight["check"], weight["status"]) == ("roundtrip", "diverged")
    assert weight["first_mismatch_index"] == [3, 5] and weight["worst_index"] == [3, 5]
    assert weight["max_ulp"] == 1 and weight["mismatched"] == 1 and weight["total"] == 128
    before, after = weight["param_hashes"]["0.weight"]
    assert before != after and len(before) == 64
    assert weight["message"].startswith(f"parameter '0.weight' changed in the safetensors-nudged round trip: "
                                        f"sha256 {before[:16]} before, {after[:16]} after\n")
    assert (weight["baseline"], weight["candidate"]) == (f"{vid} before", f"{vid} after")
    output = results[(vid, "y")]
    assert output["status"] == "diverged"
    assert output["message"].startswith("the safetensors-nudged round trip changed output 'y' (judged bit for bit)\n")
    assert output["worst_index"][1] == 3  # the nudged weight's row feeds output column 3
    assert output["reproduce"] == f"detharness run --cases {cases} -k '{vid}' --check roundtrip"
    assert (vid, "param:0.bias") not in results  # only the changed parameter gets a result

    manifest = json.loads((tmp_path / "A" / "manifest.json").read_text())
    trip = manifest["variants"][vid]["roundtrip"]
    assert trip["params"]["0.weight"]["before"] == before and trip["params"]["0.weight"]["after"] == after
    assert set(trip["changed_params"]) == {"0.weight"}
    assert trip["before_outputs"]["y"]["sha256"] != manifest["variants"][vid]["outputs"]["y"]["sha256"]


def test_lossy_json_fails_and_the_builtin_json_keeps_every_bit(tmp_path: Path) -> None:
    cases = write_cases(tmp_path / "lossy", LOSSY_JSON_CASES)
    result = run_cli("run", "--cases", str(cases), "--in-process", "--format", "json")
    assert result.returncode == 1, result.stdout + result.stderr
    results = _results(result.stdout)
    assert results[("mine/scaler[numpy:cpu:float64:roundtrip:json]", "y")]["status"] == "identical"
    assert results[("mine/scaler[numpy:cpu:float64:roundtrip:json]", "params")]["status"] == "identical"
    lossy = results[("mine/scaler[numpy:cpu:float64:roundtrip:json-6g]", "y")]
    assert lossy["status"] == "diverged" and lossy["mismatched"] > 0
    assert "Worst at [" in lossy["message"]
    assert results[("mine/scaler[numpy:cpu:float64:roundtrip:json-6g]", "param:mean")]["status"] == "diverged"


def test_builtin_roundtrips_pass_and_compare_across_bundles(tmp_path: Path) -> None:
    result = run_cli("run", "--tag", "roundtrip", "--device", "cpu", "--format", "json", "--out", str(tmp_path / "A"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    report = json.loads(result.stdout)
    results = _results(result.stdout)
    assert {r["check"] for r in report["results"]} == {"roundtrip"}
    assert set(report["summary"]) <= {"identical", "close"}
    for vid in ("models/mlp[torch:cpu:float32:roundtrip:torch.save]",
                "models/mlp[torch:cpu:float32:roundtrip:safetensors]",
                "models/mlp[torch:cpu:float32:roundtrip:torch.export]",
                "models/conv_block[torch:cpu:float32:roundtrip:safetensors]",
                "models/mlp[jax:cpu:float32:roundtrip:jax.export]",
                "roundtrip/standard_scaler[numpy:cpu:float32:roundtrip:json]",
                "roundtrip/category_encoder[numpy:cpu:int64:roundtrip:safetensors]"):
        outputs = [r for (v, _), r in results.items() if v == vid]
        assert outputs and all(r["status"] == "identical" for r in outputs), (vid, outputs)
    # ONNX hands the numbers to another runtime: judged by the case's tolerance, and the exporters
    # fold the batch norm into the conv's weights, which the hashes show.
    onnx = results[("models/conv_block[torch:cpu:float32:roundtrip:onnx:dynamo:opset20:opt:extended]", "y")]
    assert onnx["status"] in ("identical", "close")
    params = results[("models/conv_block[torch:cpu:float32:roundtrip:onnx:dynamo:opset20:opt:extended]", "params")]
    assert params["status"] in ("identical", "close")
    assert "rewritten by the export" in params["message"] or "not found under their own name" in params["message"]
    levels = {v.rsplit(":", 1)[1].rstrip("]") for v, _ in results if ":roundtrip:onnx:torchscript:opset18:" in v}
    assert levels == {"disabled", "basic", "extended", "layout", "all"}

    same = run_cli("compare", str(tmp_path / "A"), str(tmp_path / "A"), "--format", "json", "-k", "roundtrip")
    assert same.returncode == 0
    compared = json.loads(same.stdout)["results"]
    assert compared and {(r["check"], r["status"]) for r in compared} == {("environment", "identical")}


def test_round_trips_are_declared_on_module_builders_only() -> None:
    c = Case("t/plain")
    c.impl("numpy", backend="numpy")(lambda x: {"y": x})
    with pytest.raises(CaseError, match="is a plain function; round trips save and load what a module builder returns"):
        c.roundtrip("numpy")
    with pytest.raises(CaseError, match="unknown implementation 'torch'"):
        c.roundtrip("torch")
    c.impl("builder", backend="numpy", module=True, modes=())(lambda params: None)
    with pytest.raises(CaseError, match=r"no round-trip format 'pickle' for backend 'numpy' \(known: json, safetensors\)"):
        c.roundtrip("builder", ["pickle"])
    c.roundtrip("builder", ["json"], dtypes=("float64",))
    assert [v.id for v in c.variants()][-1] == "t/plain[builder:cpu:float64:roundtrip:json]"
    assert roundtrip_modes("numpy") == ("roundtrip:json", "roundtrip:safetensors")
    assert "roundtrip:onnx:dynamo:opset18:opt:disabled" in roundtrip_modes("torch")


def test_tag_roundtrip_selects_round_trip_variants_of_model_cases() -> None:
    from detharness.cases import builtin_cases_path
    from detharness.runner import RunOptions, select_variants

    registry = discover([builtin_cases_path()])
    chosen = select_variants(registry, RunOptions(tags=["roundtrip"]))
    assert chosen and all(":roundtrip:" in v.id for v in chosen)
    assert "models/mlp[torch:cpu:float32:roundtrip:safetensors]" in {v.id for v in chosen}
    by_check = select_variants(registry, RunOptions(checks=["roundtrip"], keyword="mlp"))
    assert {v.id for v in by_check} == {v.id for v in chosen if v.case.id == "models/mlp"}


# -- the state formats keep every bit, whatever the floats ---------------------------------------


class _State:
    def __init__(self, state: dict[str, np.ndarray]) -> None:
        self.state = state

    def get_state(self) -> dict[str, np.ndarray]:
        return self.state

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> _State:
        return cls(state)


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(["float16", "bfloat16", "float32", "float64"]), data=st.data())
def test_json_and_safetensors_states_keep_every_bit_pattern(dtype: str, data: st.DataObject) -> None:
    """NaN payloads, signed zeros, subnormals, infinities: raw bit patterns of every kind."""
    width = numpy_dtype(dtype).itemsize
    bits = data.draw(st.lists(st.integers(0, 2 ** (8 * width) - 1), min_size=0, max_size=20))
    values = np.array(bits, dtype=f"u{width}").view(numpy_dtype(dtype))
    obj = _State({"w": values.reshape(-1, 1) if values.size % 2 else values, "names": np.array(["a", "β"])})
    for fmt in (NumpyJsonFormat(), NumpySafetensorsFormat()):
        ctx = RoundtripContext(backend=None, device="cpu", dtype=dtype, example_inputs=(), build=lambda: obj,
                               key="k", obj=obj)
        with tempfile.TemporaryDirectory() as folder:
            fmt.save(obj, Path(folder), ctx)
            back = fmt.load(Path(folder), ctx)
        params, changed, notes = compare_parameters(obj.get_state(), back.get_state())
        assert not changed and not notes, (fmt.name, values, back.get_state())
        assert all(p["before"] == p["after"] for p in params.values())
        assert sha256_of(back.get_state()["w"]) == sha256_of(obj.get_state()["w"])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int64"])
def test_a_0d_state_keeps_its_shape_through_every_numpy_format(dtype: str) -> None:
    """A fitted count or mean is often a 0-d array: a format must not hand it back as shape (1,)."""
    obj = _State({"n": np.asarray(3, dtype=numpy_dtype(dtype))})
    for fmt in (NumpyJsonFormat(), NumpySafetensorsFormat()):
        ctx = RoundtripContext(backend=None, device="cpu", dtype="float32", example_inputs=(), build=lambda: obj,
                               key="k", obj=obj)
        with tempfile.TemporaryDirectory() as folder:
            fmt.save(obj, Path(folder), ctx)
            back = fmt.load(Path(folder), ctx)
        assert back.get_state()["n"].shape == (), fmt.name
        _params, changed, notes = compare_parameters(obj.get_state(), back.get_state())
        assert not changed and not notes, (fmt.name, notes)


# -- the sessions of the ONNX round trips ---------------------------------------------------------


def test_an_onnx_round_trip_runs_its_session_with_errors_only_logging(session_severities: list[int]) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from detharness.backends import load_backend

    backend, _ = load_backend("torch", False)
    severities = session_severities
    fmt = find_format("torch", "onnx:torchscript:opset18:opt:basic")
    assert fmt is not None
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 2)
    x = backend.to_native(np.linspace(-1, 1, 12, dtype="float32").reshape(3, 4))
    vid = "t/linear[torch:cpu:float32:roundtrip:onnx:torchscript:opset18:opt:basic]"
    ctx = RoundtripContext(backend=backend, device="cpu", dtype="float32", example_inputs=(x,),
                           build=lambda: torch.nn.Linear(4, 2), key="test-onnx-session-logging", variant_id=vid)
    assert fmt.before_spec(ctx) == VariantSpec("cpu", "float32", "eager", is_module=True, variant_id=vid)
    call, trip = run_roundtrip(fmt, module, ctx, [x], seed=0, names=None)
    after = backend.outputs_to_numpy(call(x))
    np.testing.assert_allclose(after["y"], trip.before_outputs["y"], rtol=1e-6, atol=1e-7)
    assert ctx.info["onnx.opset"] == 18 and ctx.info["torch.onnx.exporter"] == "torchscript"
    assert severities == [3]
