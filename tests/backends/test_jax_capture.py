"""Layer capture of jax functions: op-by-op evaluation, names, named scopes, size cap, bitwise check."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from detharness.backends.jax_capture import Captured, capture, reproduces, scoped_layers
from detharness.dtypes import bitwise_equal

pytest.importorskip("jax")
import jax
import jax.numpy as jnp


def two_blocks(x: Any, w: Any) -> Any:
    with jax.named_scope("block0"):
        y = jnp.tanh(x @ w)
    with jax.named_scope("block1"):
        z = jnp.tanh(y @ w)
    return z


def ln_gelu_matmul(x: Any, g: Any, b: Any, w: Any) -> Any:
    with jax.named_scope("norm"):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        h = (x - mean) / jnp.sqrt(var + 1e-5) * g + b
    with jax.named_scope("act"):
        h = jax.nn.gelu(h)
    with jax.named_scope("proj"):
        return h @ w


@pytest.fixture
def xw() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((4, 8)).astype(np.float32), rng.standard_normal((8, 8)).astype(np.float32)


def test_layers_in_program_order_with_scope_names(xw: tuple[np.ndarray, np.ndarray]) -> None:
    captured = capture(two_blocks, xw)
    assert [name for name, _ in captured.layers] == [
        "block0/dot_general:0",
        "block0/tanh:1",
        "block1/dot_general:2",
        "block1/tanh:3",
    ]
    assert captured.notes == [] and captured.dropped == 0
    assert all(a.flags.owndata and a.dtype == np.float32 for _, a in captured.layers)


def test_scoped_layers_are_the_blocks_outputs(xw: tuple[np.ndarray, np.ndarray]) -> None:
    x, w = xw
    captured = capture(two_blocks, xw)
    scoped = scoped_layers(captured)
    assert [name for name, _ in scoped] == ["block0", "block1"]
    block0 = np.tanh(x @ w)
    block1 = np.tanh(block0 @ w)
    np.testing.assert_allclose(scoped[0][1], block0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scoped[1][1], block1, rtol=1e-5, atol=1e-6)
    # The last block's output is the function's output, as this evaluation computed it.
    assert len(captured.outputs) == 1
    assert bitwise_equal(scoped[1][1], captured.outputs[0])


def test_nested_scopes_calls_and_control_flow() -> None:
    @jax.jit
    def inner(x: Any) -> Any:
        with jax.named_scope("in"):
            return jnp.sin(x) * 2

    def fn(x: Any) -> Any:
        with jax.named_scope("outer"):
            y = jax.nn.relu(inner(x))  # a jit call, and a custom_jvp around another jit call
            return jax.lax.cond(y.sum() > 0, lambda t: t + 1, lambda t: t - 1, y)

    x = np.array([0.5, -1.0, 2.0], np.float32)
    captured = capture(fn, (x,))
    names = [name for name, _ in captured.layers]
    # Calls are evaluated in place (their equations recorded, under the caller's scope); cond is
    # bound whole, one layer, and said.
    assert names[:3] == ["outer/in/sin:0", "outer/in/mul:1", "outer/max:2"]
    assert names[-1].startswith("outer/cond:")
    assert not any(name.split("/")[-1].startswith(("jit:", "pjit:", "custom_jvp_call:")) for name in names)
    assert any("cond" in note for note in captured.notes)
    scoped = dict(scoped_layers(captured))
    assert list(scoped) == ["outer/in", "outer"]
    np.testing.assert_allclose(scoped["outer/in"], np.sin(x) * 2, rtol=1e-6)
    expected = np.maximum(np.sin(x) * 2, 0) + 1
    np.testing.assert_allclose(scoped["outer"], expected, rtol=1e-6)
    np.testing.assert_allclose(captured.outputs[0], expected, rtol=1e-6)


def test_jitted_function_pytree_args_and_constants_are_not_layers() -> None:
    bias = np.arange(3, dtype=np.float32)  # closed over: a constant, not a layer

    @jax.jit
    def fn(params: dict[str, Any], x: Any) -> tuple[Any, Any]:
        with jax.named_scope("lin"):
            y = x @ params["w"] + bias
        return y, y * 2.0

    params = {"w": np.eye(3, dtype=np.float32)}
    x = np.ones((2, 3), np.float32)
    captured = capture(fn, (params, x))
    primitives = [name.rsplit("/", 1)[-1].split(":")[0] for name, _ in captured.layers]
    assert primitives[0] == "dot_general" and primitives[-2:] == ["add", "mul"]
    assert not any(a.shape == bias.shape for _, a in captured.layers)  # the constant itself is no layer
    assert [name for name, _ in scoped_layers(captured)] == ["lin"]
    assert len(captured.outputs) == 2
    np.testing.assert_array_equal(captured.outputs[0], x + bias)
    np.testing.assert_array_equal(captured.outputs[1], (x + bias) * 2)


def test_reproduces_reports_the_truth_for_layer_norm_gelu_matmul() -> None:
    rng = np.random.default_rng(1)
    n, d = 64, 256
    args = (
        rng.standard_normal((n, d)).astype(np.float32),
        rng.standard_normal(d).astype(np.float32),
        rng.standard_normal(d).astype(np.float32),
        rng.standard_normal((d, d)).astype(np.float32),
    )
    jitted = np.asarray(jax.jit(ln_gelu_matmul)(*args))
    captured = capture(ln_gelu_matmul, args)
    assert [name for name, _ in scoped_layers(captured)] == ["norm", "act", "proj"]
    # Op by op may or may not equal the compiled program bit for bit: whatever it is, it is reported.
    assert reproduces(captured, jitted) == bitwise_equal(captured.outputs[0], jitted)
    assert reproduces(captured, [jitted]) == reproduces(captured, jitted)
    np.testing.assert_allclose(captured.outputs[0], jitted, rtol=1e-3, atol=1e-3)


def test_reproduces_is_bitwise() -> None:
    captured = Captured(outputs=[np.array([1.0, 0.0, np.nan], np.float32)])
    assert reproduces(captured, [np.array([1.0, 0.0, np.nan], np.float32)])
    assert not reproduces(captured, [np.array([1.0, -0.0, np.nan], np.float32)])  # -0.0 is other bits
    assert not reproduces(captured, [np.array([1.0, 0.0, np.nan], np.float64)])  # dtype
    assert not reproduces(captured, [np.array([[1.0, 0.0, np.nan]], np.float32)])  # shape
    assert not reproduces(captured, [np.nextafter(captured.outputs[0], np.float32(2))])
    assert not reproduces(captured, [captured.outputs[0], captured.outputs[0]])  # count


def test_max_bytes_keeps_the_first_part(xw: tuple[np.ndarray, np.ndarray]) -> None:
    layer = 4 * 8 * 4  # one (4, 8) float32 output
    full = capture(two_blocks, xw)
    capped = capture(two_blocks, xw, max_bytes=2 * layer + layer // 2)
    assert [name for name, _ in capped.layers] == [name for name, _ in full.layers[:2]]
    assert capped.dropped == 2
    assert any("kept 2 of 4" in note for note in capped.notes)
    # The whole function still ran; a scope whose last output was dropped is left out.
    assert bitwise_equal(capped.outputs[0], full.outputs[0])
    assert [name for name, _ in scoped_layers(capped)] == ["block0"]
    nothing = capture(two_blocks, xw, max_bytes=0)
    assert nothing.layers == [] and nothing.dropped == 4 and scoped_layers(nothing) == []
    with pytest.raises(ValueError, match="max_bytes"):
        capture(two_blocks, xw, max_bytes=-1)


def test_bfloat16_input(xw: tuple[np.ndarray, np.ndarray]) -> None:
    x, w = (a.astype(jnp.bfloat16) for a in xw)
    captured = capture(two_blocks, (x, w))
    assert len(captured.layers) == 4
    assert all(a.dtype == jnp.bfloat16 for _, a in captured.layers)
    assert captured.outputs[0].dtype == jnp.bfloat16
    scoped = dict(scoped_layers(captured))
    block0 = np.tanh(x.astype(np.float32) @ w.astype(np.float32))
    np.testing.assert_allclose(scoped["block0"].astype(np.float32), block0, rtol=0.05, atol=0.05)
    jitted = np.asarray(jax.jit(two_blocks)(x, w))
    assert reproduces(captured, jitted) == bitwise_equal(captured.outputs[0], jitted)
