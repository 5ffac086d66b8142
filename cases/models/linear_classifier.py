"""A classification head: Linear(256, 100) logits over 512 pooled feature vectors, and the label a
consumer takes from them (argmax). The torch module is exported to ONNX and run in ONNX Runtime
(mode ``onnx``) and ported to JAX with the same weights.

The logits pass their tolerance everywhere; what a serving path changes is which class wins where
the top two logits are close. Measured on an x86 CPU (torch 2.13, jax 0.10) against the float64
product: float32 flips no label; the half-precision ports flip a few rows whose margins are within
the tolerance (near ties), which the budget allows.
"""

import numpy as np

from detharness import case


def _params(rng):
    return {
        "w": (rng.standard_normal((100, 256)) / 16).astype("float32"),
        "b": (0.1 * rng.standard_normal(100)).astype("float32"),
    }


c = case(
    "models/linear_classifier",
    tags={"model"},
    description="Linear(256, 100) logits of 512 feature vectors; consumers take the argmax",
    inputs=lambda rng: {"features": np.maximum(rng.standard_normal((512, 256)), 0).astype("float32")},
    params=_params,
    tolerance={"float32": "scaled(9e-7)", "float16": "scaled(2e-3)", "bfloat16": "scaled(2e-2)"},
    outputs=("logits",),
    decisions={"logits": "argmax @ 2%"},
)


# The reference's float32 variant is the accuracy's baseline: the same product at float32.
@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64", "float32"))
def _(features, params):
    return {"logits": features @ params["w"].T.astype(features.dtype) + params["b"].astype(features.dtype)}


@c.impl("torch", backend="torch", module=True, dtypes=("float32", "float16", "bfloat16"), modes=("eager", "onnx"))
def _(params):
    import torch

    head = torch.nn.Linear(256, 100)
    with torch.no_grad():
        head.weight.copy_(params["w"])
        head.bias.copy_(params["b"])
    return head


@c.impl("jax", backend="jax", module=True, dtypes=("float32", "float16", "bfloat16"))
def _(params):
    def head(features):
        return features @ params["w"].T + params["b"]

    return head
