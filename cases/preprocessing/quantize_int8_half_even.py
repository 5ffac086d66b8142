"""Quantization to int8, rounding ties to even: ``clip(round(x / scale) + zero_point, -128, 127)``.

ONNX's ``QuantizeLinear`` (run here by ONNX Runtime), ``np.round``, ``torch.round`` and ``jnp.round``
all round half to even. A scale of 1/16 makes ``x / scale`` exact, and a third of the inputs are
exact ties. Two known divergences, both one step off on ties:

- C's ``roundf`` and ``std::round``, what hand-written serving code reaches for, round ties away
  from zero (the bug fixed in sonos/tract#2850 and llvm/torch-mlir#3569): ``c-roundf``.
  ``preprocessing/quantize_int8_half_away`` is that rule done consistently.
- ``torch.quantize_per_tensor`` rounds ``x / scale + zero_point``, by design since
  pytorch/pytorch#19714: with an odd zero point each tie goes the other way.
"""

import numpy as np

from detharness import case

SCALE, ZERO_POINT = 1 / 16, 3


def _activations(rng):
    ties = (rng.integers(-2200, 2200, size=2048) + 0.5) * SCALE  # beyond the int8 range too
    x = np.where(rng.random(2048) < 1 / 3, ties, rng.uniform(-9, 9, size=2048))
    return {"x": x.astype("float32")}


c = case(
    "preprocessing/quantize_int8_half_even",
    tags={"preprocessing"},
    description="2048 float32 activations to int8 with scale 1/16, zero point 3, ties to even",
    inputs=_activations,
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float32",))
def _(x):
    return {"q": np.clip(np.round(x / np.float32(SCALE)) + ZERO_POINT, -128, 127).astype(np.int8)}


@c.impl("torch", backend="torch", dtypes=("float32",))
def _(x):
    import torch

    return {"q": torch.clamp(torch.round(x / SCALE) + ZERO_POINT, -128, 127).to(torch.int8)}


@c.impl("torch-quantize_per_tensor", backend="torch", dtypes=("float32",), devices=("cpu",))
def _(x):
    import warnings

    import torch

    with warnings.catch_warnings():  # quantized tensors are deprecated (torch 2.13); still in use
        warnings.simplefilter("ignore", UserWarning)
        return {"q": torch.quantize_per_tensor(x, SCALE, ZERO_POINT, torch.qint8).int_repr()}


@c.impl("jax", backend="jax", dtypes=("float32",))
def _(x):
    import jax.numpy as jnp

    return {"q": jnp.clip(jnp.round(x / SCALE) + ZERO_POINT, -128, 127).astype(jnp.int8)}


@c.impl("onnxruntime", backend="onnxruntime", module=True, dtypes=("float32",))
def _(params):
    from onnx import TensorProto, helper

    node = helper.make_node("QuantizeLinear", ["x", "scale", "zero_point"], ["q"])
    graph = helper.make_graph(
        [node], "quantize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2048])],
        [helper.make_tensor_value_info("q", TensorProto.INT8, [2048])],
        initializer=[helper.make_tensor("scale", TensorProto.FLOAT, [], [SCALE]),
                     helper.make_tensor("zero_point", TensorProto.INT8, [], [ZERO_POINT])],
    )
    opsets = [helper.make_opsetid("", 13)]
    # The IR version the opset needs, not this onnx's newest: an older onnxruntime refuses a newer IR
    # ("Unsupported model IR version: 14, max supported IR version: 13", onnxruntime 1.30 on a GPU runner).
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


@c.impl("c-roundf", backend="numpy", dtypes=("float32",))
def _(x):
    v = x / np.float32(SCALE)
    return {"q": np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5) + ZERO_POINT, -128, 127).astype(np.int8)}


c.known_divergence(
    "C's roundf/std::round round ties away from zero; QuantizeLinear, numpy, torch and jax round them "
    "to even: every exact tie is one step off",
    variants="*[c-roundf:*",
    checks=("backend",),  # against the reference; elsewhere it matches itself
)
c.known_divergence(
    "torch.quantize_per_tensor rounds x / scale + zero_point (pytorch/pytorch#19714), not "
    "round(x / scale) + zero_point as QuantizeLinear: an odd zero point flips every tie",
    variants="*[torch-quantize_per_tensor:*",
    checks=("backend",),  # against the reference; elsewhere it matches itself
)
