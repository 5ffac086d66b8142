"""Layer normalization with learned scale and shift.

torch's kernel, ONNX Runtime's LayerNormalization (the export) and a jax formula each compute
mean and variance their own way. Outputs near zero make ULP counts explode (torch vs a numpy
formula: 16,393 ULP at worst here), so they are judged by the error relative to the output's scale.
"""

import numpy as np

from detharness import case

EPS = 1e-5

c = case(
    "models/layer_norm",
    tags={"model"},
    description="layer_norm over the last axis (256) of 512 x 256, with weight and bias",
    inputs=lambda rng: {"x": (rng.standard_normal((512, 256)) * 4 + 1).astype("float32")},
    params=lambda rng: {"weight": (1 + 0.1 * rng.standard_normal(256)).astype("float32"),
                        "bias": (0.1 * rng.standard_normal(256)).astype("float32")},
    # Worst scaled error here x3, rounded up for other CPUs' kernels: f32 1.4e-7, f16 1.3e-3, bf16 9.6e-3
    tolerance={"float32": "scaled(5e-7)", "float16": "scaled(4e-3)", "bfloat16": "scaled(3e-2)"},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
def _(x, params):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return {"y": (x - mean) / np.sqrt(var + EPS) * params["weight"] + params["bias"]}


@c.impl("torch", backend="torch", module=True, dtypes=("float32", "float16", "bfloat16"), modes=("eager", "onnx"))
def _(params):
    import torch

    norm = torch.nn.LayerNorm(256, eps=EPS)
    with torch.no_grad():
        norm.weight.copy_(params["weight"])
        norm.bias.copy_(params["bias"])
    return norm


@c.impl("jax", backend="jax", dtypes=("float32", "float16", "bfloat16"))
def _(x, params):
    import jax.numpy as jnp

    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.var(x, -1, keepdims=True)
    return {"y": (x - mean) / jnp.sqrt(var + EPS) * params["weight"] + params["bias"]}
