"""BatchNorm2d in eval mode: ``(x - running_mean) / sqrt(running_var + eps) * weight + bias``.

torch folds the statistics into one scale and shift per channel before it touches ``x``; ONNX
Runtime's BatchNormalization kernel and a jax port written from the formula round in another order,
so outputs near zero differ by thousands of ULP (8,371 at worst here) though the error is tiny
against the output's scale, which is the judge (as for layer_norm, where torch and a numpy formula
are 16,393 ULP apart at worst, again near zero, measured with torch 2.13 and numpy 2.4).
"""

import numpy as np

from detharness import case

EPS = 1e-5
CHANNELS = 16


def _params(rng):
    return {
        "weight": (1 + 0.2 * rng.standard_normal(CHANNELS)).astype("float32"),
        "bias": (0.2 * rng.standard_normal(CHANNELS)).astype("float32"),
        "running_mean": (0.5 * rng.standard_normal(CHANNELS)).astype("float32"),
        "running_var": rng.uniform(0.25, 4.0, CHANNELS).astype("float32"),
    }


c = case(
    "models/batch_norm",
    tags={"model"},
    description="BatchNorm2d(16) in eval mode on 8 x 16 x 16 x 16, with running statistics",
    inputs=lambda rng: {"x": (rng.standard_normal((8, CHANNELS, 16, 16)) * 2 + 0.5).astype("float32")},
    params=_params,
    # Worst scaled error here x3, rounded up for other CPUs' kernels: f32 1.5e-7, f16 1.5e-3, bf16 8.4e-3
    tolerance={"float32": "scaled(5e-7)", "float16": "scaled(5e-3)", "bfloat16": "scaled(3e-2)"},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
def _(x, params):
    def per_channel(name):
        return params[name][None, :, None, None]

    y = (x - per_channel("running_mean")) / np.sqrt(per_channel("running_var") + EPS)
    return {"y": y * per_channel("weight") + per_channel("bias")}


@c.impl("torch", backend="torch", module=True, dtypes=("float32", "float16", "bfloat16"), modes=("eager", "onnx"))
def _(params):
    import torch

    bn = torch.nn.BatchNorm2d(CHANNELS, eps=EPS)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name).copy_(params[name])
    return bn.eval()


@c.impl("jax", backend="jax", module=True, dtypes=("float32", "float16", "bfloat16"))
def _(params):
    import jax.numpy as jnp

    def per_channel(name):
        return params[name][None, :, None, None]

    def batch_norm(x):
        y = (x - per_channel("running_mean")) / jnp.sqrt(per_channel("running_var") + EPS)
        return y * per_channel("weight") + per_channel("bias")

    return batch_norm
