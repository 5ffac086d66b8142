"""Softmax over the last axis: every backend has its own kernel, vectorized per ISA.

Here torch, jax and onnxruntime each land within a few ULP of float64 numpy, with most elements
not bitwise equal; torch's bits also change under each ATEN_CPU_CAPABILITY (default, avx2,
avx512; measured with torch 2.13 on an AVX-512 CPU).
"""

import numpy as np

from detharness import case

c = case(
    "models/softmax",
    tags={"model"},
    description="softmax over the last axis of 256 x 512 logits",
    inputs=lambda rng: {"x": (rng.standard_normal((256, 512)) * 3).astype("float32")},
    # exp(z) turns the rounding of z = x - max into a relative error of |z| ulp; |z| reaches ~20
    # here, so float32 lands up to ~22 ulp from float64 (torch, jax and onnxruntime alike).
    # Half precision is judged against the output's scale, its largest value: worst here 1.4e-3
    # (float16, jax) and 1.0e-2 (bfloat16, torch); each bound is 3x that, rounded up.
    tolerance={"float32": "ulp(32)", "float16": "scaled(5e-3)", "bfloat16": "scaled(4e-2)"},
    decisions={"y": "topk(5) @ 10%"},  # measured: bfloat16 changes 13 of 256 top-5 sets, float16 1 (near ties)
)


# The reference's float32 variant is the accuracy's baseline: the same formula at float32.
@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64", "float32"))
def _(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return {"y": e / e.sum(-1, keepdims=True)}


@c.impl("torch", backend="torch", module=True, dtypes=("float32", "float16", "bfloat16"), modes=("eager", "onnx"))
def _(params):
    import torch

    return torch.nn.Softmax(dim=-1)


@c.impl("jax", backend="jax", dtypes=("float32", "float16", "bfloat16"))
def _(x):
    import jax

    return {"y": jax.nn.softmax(x, axis=-1)}


@c.impl("onnxruntime", backend="onnxruntime", module=True, dtypes=("float32",))
def _(params):
    from onnx import TensorProto, helper

    node = helper.make_node("Softmax", ["x"], ["y"], axis=-1)
    graph = helper.make_graph([node], "softmax", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, 512])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256, 512])])
    opsets = [helper.make_opsetid("", 17)]
    # The IR version the opset needs, not this onnx's newest: an older onnxruntime refuses a newer IR
    # ("Unsupported model IR version: 14, max supported IR version: 13", onnxruntime 1.30 on a GPU runner).
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
