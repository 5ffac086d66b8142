"""Layer capture and shadow runs on torch modules: names, order, hooks, size cap, introduced error."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from detharness.backends.torch_backend import TorchBackend
from detharness.backends.torch_capture import Captured, capture, shadow

pytest.importorskip("torch")
import torch


def f32(t: Any) -> np.ndarray:
    return t.float().cpu().numpy()  # type: ignore[no-any-return]


def to_tensor(a: np.ndarray) -> Any:
    return torch.from_numpy(np.array(a, copy=True))


class Block(torch.nn.Module):
    """Linear -> ReLU -> LayerNorm."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(width, width)
        self.act = torch.nn.ReLU()
        self.norm = torch.nn.LayerNorm(width)

    def forward(self, x: Any) -> Any:
        return self.norm(self.act(self.linear(x)))


class Twice(torch.nn.Module):
    """Calls its ``shared`` layer twice."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.shared = torch.nn.Linear(width, width)

    def forward(self, x: Any) -> Any:
        return self.shared(torch.tanh(self.shared(x)))


class Split(torch.nn.Module):
    """Returns a tuple (two tensors and a None) and a dict, nested."""

    def forward(self, x: Any) -> Any:
        return x * 2, None, {"neg": -x}


class Join(torch.nn.Module):
    def forward(self, parts: Any) -> Any:
        a, _, rest = parts
        return a + rest["neg"] * 0.5


class Model(torch.nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(Block(width), Block(width))
        self.twice = Twice(width)
        self.split = Split()
        self.join = Join()
        self.head = torch.nn.Linear(width, 3)

    def forward(self, x: Any) -> Any:
        h = self.twice(self.stem(x))
        return self.head(self.join(self.split(h)))


EXPECTED_NAMES = [
    "stem.0.linear", "stem.0.act", "stem.0.norm", "stem.0",
    "stem.1.linear", "stem.1.act", "stem.1.norm", "stem.1",
    "stem",
    "twice.shared", "twice.shared#2", "twice",
    "split.0", "split.2.neg",
    "join",
    "head",
]  # fmt: skip


@pytest.fixture
def model() -> Model:
    torch.manual_seed(0)
    return Model().eval()


@pytest.fixture
def x() -> Any:
    torch.manual_seed(1)
    return torch.randn(4, 8)


def by_hand(model: Model, x: Any) -> dict[str, Any]:
    """Every layer output, computed by calling the layers one by one."""
    out: dict[str, Any] = {}
    h = x
    blocks: Any = model.stem
    with torch.no_grad():
        for i, block in enumerate(blocks):
            a = out[f"stem.{i}.linear"] = block.linear(h)
            b = out[f"stem.{i}.act"] = block.act(a)
            h = out[f"stem.{i}.norm"] = out[f"stem.{i}"] = block.norm(b)
        out["stem"] = h
        s1 = out["twice.shared"] = model.twice.shared(h)
        h = out["twice.shared#2"] = out["twice"] = model.twice.shared(torch.tanh(s1))
        out["split.0"], out["split.2.neg"] = h * 2, -h
        h = out["join"] = out["split.0"] + out["split.2.neg"] * 0.5
        out["head"] = model.head(h)
    return out


def hook_counts(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_names_order_and_values(model: Model, x: Any) -> None:
    with torch.no_grad():
        plain = model(x)
    out, cap = capture(model, (x,), to_numpy=f32)
    assert isinstance(cap, Captured)
    assert [name for name, _ in cap.layers] == EXPECTED_NAMES
    expected = by_hand(model, x)
    for name, array in cap.layers:
        np.testing.assert_array_equal(array, expected[name].numpy(), err_msg=name)
    # the returned output is the module's, bit for bit, and is the last layer's too
    assert torch.equal(out, plain)
    assert out.numpy().tobytes() == plain.numpy().tobytes()
    assert cap.inputs == {} and cap.notes == [] and cap.dropped == 0


def test_stored_arrays_survive_in_place_ops(x: Any) -> None:
    seq = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(inplace=True))
    _, cap = capture(seq, (x,), to_numpy=lambda t: t.numpy(), with_inputs=True)
    with torch.no_grad():
        linear = seq[0](x)
    np.testing.assert_array_equal(cap.layers[0][1], linear.numpy())  # not relu'd afterwards
    assert (cap.layers[0][1] < 0).any()
    np.testing.assert_array_equal(cap.inputs["1"][0], linear.numpy())  # as ReLU started


def test_hooks_removed(model: Model, x: Any) -> None:
    before = hook_counts(model)
    capture(model, (x,), to_numpy=f32, with_inputs=True, max_bytes=100)
    assert hook_counts(model) == before == 0


def test_hooks_removed_after_exception(model: Model) -> None:
    with pytest.raises(RuntimeError):
        capture(model, (torch.randn(4, 5),), to_numpy=f32)  # wrong width: the first Linear raises
    assert hook_counts(model) == 0

    class Boom(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = torch.nn.Linear(2, 2)

        def forward(self, x: Any) -> Any:
            self.inner(x)
            raise ValueError("inside forward")

    boom = Boom()
    with pytest.raises(ValueError, match="inside forward"):
        capture(boom, (torch.zeros(1, 2),), to_numpy=f32, with_inputs=True)
    assert hook_counts(boom) == 0


def test_root_excluded_and_user_hooks_kept(model: Model, x: Any) -> None:
    seen: list[str] = []
    handle = model.head.register_forward_hook(lambda *_: seen.append("head"))
    try:
        _, cap = capture(model, (x,), to_numpy=f32)
    finally:
        handle.remove()
    assert seen == ["head"]
    assert "" not in [name for name, _ in cap.layers]


def test_max_bytes_drops_the_rest(model: Model, x: Any) -> None:
    _, full = capture(model, (x,), to_numpy=f32)
    per_layer = 4 * 8 * 4  # a (4, 8) float32 output
    _, cap = capture(model, (x,), to_numpy=f32, max_bytes=5 * per_layer + 1)
    assert [n for n, _ in cap.layers] == EXPECTED_NAMES[:5]
    assert cap.dropped == len(EXPECTED_NAMES) - 5
    assert cap.notes == [
        f"kept 5 of {len(EXPECTED_NAMES)} layer outputs (5 of 15 layer calls, the first 641 bytes); the rest dropped"
    ]
    for (name, a), (full_name, b) in zip(cap.layers, full.layers, strict=False):
        assert name == full_name
        np.testing.assert_array_equal(a, b)
    _, none_kept = capture(model, (x,), to_numpy=f32, max_bytes=0)
    assert none_kept.layers == [] and none_kept.dropped == len(EXPECTED_NAMES)
    _, big = capture(model, (x,), to_numpy=f32, max_bytes=200_000_000)
    assert big.dropped == 0 and big.notes == []
    _, capped_in = capture(model, (x,), to_numpy=f32, with_inputs=True, max_bytes=2 * per_layer)
    assert [n for n, _ in capped_in.layers] == ["stem.0.linear"]  # its input counts too
    assert list(capped_in.inputs) == ["stem.0.linear"]


def test_inputs_and_unreplayable_calls(model: Model, x: Any) -> None:
    _, cap = capture(model, (x,), to_numpy=f32, with_inputs=True)
    # join takes a tuple holding None and a dict: not replayable, not recorded; split's key has no ".i"
    assert list(cap.inputs) == [*EXPECTED_NAMES[:12], "split", "head"]
    np.testing.assert_array_equal(cap.inputs["stem.0.linear"][0], x.numpy())
    shared = dict(cap.layers)
    np.testing.assert_array_equal(cap.inputs["twice.shared#2"][0], torch.tanh(torch.from_numpy(shared["twice.shared"])).numpy())
    assert cap.notes == [
        "inputs not recorded for 1 layer call(s) with keyword or non-tensor arguments (join); shadow runs skip them"
    ]


def test_keyword_calls_not_recorded() -> None:
    class KW(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: Any) -> Any:
            return self.attn(x, x, x, need_weights=False)[0]

    torch.manual_seed(0)
    kw = KW().eval()
    _, cap = capture(kw, (torch.randn(2, 3, 8),), to_numpy=f32, with_inputs=True)
    assert "attn" not in cap.inputs
    assert "attn.0" in dict(cap.layers)  # the None weights are left out
    assert "attn.1" not in dict(cap.layers)
    assert any("(attn)" in note for note in cap.notes)


def assert_bitwise(a: np.ndarray, b: np.ndarray, name: str) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, name
    assert a.tobytes() == b.tobytes(), name


def test_shadow_reproduces_baseline(model: Model, x: Any) -> None:
    _, base = capture(model, (x,), to_numpy=f32, with_inputs=True)
    notes: list[str] = []
    shadowed = shadow(model, base.inputs, to_tensor=to_tensor, to_numpy=f32, notes=notes)
    baseline = dict(base.layers)
    assert [n for n, _ in shadowed] == [n for n in EXPECTED_NAMES if n != "join"]
    for name, array in shadowed:
        assert_bitwise(array, baseline[name], name)  # introduced error 0 everywhere
    assert notes == []


def test_shadow_tuple_outputs_named_like_capture() -> None:
    seq = torch.nn.Sequential(torch.nn.Linear(4, 4))
    seq.add_module("split", Split())
    _, base = capture(seq, (torch.ones(2, 4),), to_numpy=f32, with_inputs=True)
    shadowed = shadow(seq, base.inputs, to_tensor=to_tensor, to_numpy=f32)
    assert [n for n, _ in shadowed] == ["0", "split.0", "split.2.neg"] == [n for n, _ in base.layers]


def test_shadow_finds_the_nudged_layer(model: Model, x: Any) -> None:
    _, base = capture(model, (x,), to_numpy=f32, with_inputs=True)
    nudged = copy.deepcopy(model)
    with torch.no_grad():
        layer: Any = nudged.stem[1]
        w = layer.linear.weight
        w.copy_(torch.nextafter(w, torch.full_like(w, float("inf"))))
    _, cand = capture(nudged, (x,), to_numpy=f32)
    candidate = dict(cand.layers)
    baseline = dict(base.layers)
    differs = [n for n in EXPECTED_NAMES if candidate[n].tobytes() != baseline[n].tobytes()]
    assert differs[0] == "stem.1.linear"  # the plain comparison: everything downstream differs
    assert "head" in differs

    shadowed = shadow(nudged, base.inputs, to_tensor=to_tensor, to_numpy=f32)
    introduced = [n for n, a in shadowed if a.tobytes() != baseline[n].tobytes()]
    # the nudged layer and the blocks around it (they run it), nothing downstream
    assert introduced == ["stem.1.linear", "stem.1", "stem"]


def test_shadow_skips_unknown_names(model: Model, x: Any) -> None:
    notes: list[str] = []
    inputs = {"nope": [x.numpy()], "head#2": [np.zeros((1, 8), np.float32)]}
    shadowed = shadow(model, inputs, to_tensor=to_tensor, to_numpy=f32, notes=notes)
    assert [n for n, _ in shadowed] == ["head#2"]
    assert notes == ["shadow skipped 1 recorded layer call(s) that name no submodule: nope"]


def test_bfloat16_with_the_backends_converters(model: Model, x: Any) -> None:
    backend = TorchBackend()
    bf = copy.deepcopy(model).to(torch.bfloat16)
    xb = x.to(torch.bfloat16)
    with torch.no_grad():
        plain = bf(xb)
    out, cap = capture(bf, (xb,), to_numpy=backend.to_numpy, with_inputs=True)
    assert torch.equal(out, plain)
    assert [n for n, _ in cap.layers] == EXPECTED_NAMES
    assert all(a.dtype.name == "bfloat16" for _, a in cap.layers)
    np.testing.assert_array_equal(dict(cap.layers)["head"], backend.to_numpy(plain))
    shadowed = shadow(
        bf, cap.inputs, to_tensor=lambda a: backend.to_native(a, "cpu"), to_numpy=backend.to_numpy
    )
    baseline = dict(cap.layers)
    for name, array in shadowed:
        assert_bitwise(array, baseline[name], name)


def test_transformer_fast_path_turned_off_is_noted() -> None:
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, activation="gelu", batch_first=True).eval()
    encoder = torch.nn.Sequential(layer)
    x = torch.randn(2, 5, 16)
    out, cap = capture(encoder, (x,), to_numpy=f32)
    names = [n for n, _ in cap.layers]
    assert names[0] == "0.self_attn.0" and names[-1] == "0"  # spelled out: its children fire
    assert len(cap.notes) == 1 and "fused fast path of 1 TransformerEncoderLayer module(s) (0)" in cap.notes[0]
    with torch.inference_mode():
        fast = encoder(x)  # the fast path again: the hooks are gone
    assert out.shape == fast.shape
    torch.testing.assert_close(out, fast)  # close; bitwise is not promised
    _, root = capture(layer, (x,), to_numpy=f32)
    assert "(the root)" in root.notes[0]
    _, training = capture(torch.nn.Sequential(layer.train()), (x,), to_numpy=f32)
    assert training.notes == []  # no fast path in training anyway
