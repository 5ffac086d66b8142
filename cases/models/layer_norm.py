"""Layer normalization with learned scale and shift.

Outputs near zero make ULP counts explode (torch vs a numpy formula: 16,393 ULP at worst here),
so float32 is judged by ULP or by error relative to the output's scale.
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
    tolerance={"float32": "ulp(16) | scaled(1e-6)", "float16": "close(4e-3, 1e-3)", "bfloat16": "close(3e-2, 2e-2)"},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
def _(x, params):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return {"y": (x - mean) / np.sqrt(var + EPS) * params["weight"] + params["bias"]}


@c.impl("torch", backend="torch", dtypes=("float32", "float16", "bfloat16"))
def _(x, params):
    import torch

    return {"y": torch.nn.functional.layer_norm(x, x.shape[-1:], params["weight"], params["bias"], EPS)}


@c.impl("jax", backend="jax", dtypes=("float32", "bfloat16"))
def _(x, params):
    import jax.numpy as jnp

    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.var(x, -1, keepdims=True)
    return {"y": (x - mean) / jnp.sqrt(var + EPS) * params["weight"] + params["bias"]}
