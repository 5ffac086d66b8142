"""A conv block: Conv2d(3 -> 8, 3x3, padding 1) -> BatchNorm2d (eval) -> ReLU.

The ONNX export folds the eval-mode batch norm into the conv's weights, ONNX Runtime fuses conv
and relu at its higher optimization levels, and CPUs pick different conv algorithms
(onnxruntime#14500, #16275); conv outputs cancel near zero (19 of 6.5M elements off with a max
relative error of 0.667 in onnxruntime#18946), so they are judged by the error relative to the
output's scale.
"""

import numpy as np

from detharness import case

EPS = 1e-5


def _params(rng):
    return {
        "weight": (rng.standard_normal((8, 3, 3, 3)) / 5).astype("float32"),
        "bias": (0.1 * rng.standard_normal(8)).astype("float32"),
        "bn_weight": (1 + 0.1 * rng.standard_normal(8)).astype("float32"),
        "bn_bias": (0.1 * rng.standard_normal(8)).astype("float32"),
        "bn_mean": (0.1 * rng.standard_normal(8)).astype("float32"),
        "bn_var": rng.uniform(0.5, 1.5, 8).astype("float32"),
    }


c = case(
    "models/conv_block",
    tags={"model"},
    description="conv 3x3 + batch norm (eval) + relu on 4 x 3 x 32 x 32 images",
    inputs=lambda rng: {"x": rng.standard_normal((4, 3, 32, 32)).astype("float32")},
    params=_params,
    # Worst scaled error here x3, rounded up for other CPUs' kernels: f32 2.6e-7, f16 8.9e-4, bf16 6.5e-3
    tolerance={"float32": "scaled(8e-7)", "float16": "scaled(3e-3)", "bfloat16": "scaled(2e-2)"},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
def _(x, params):
    _, cin, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = np.stack([padded[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=2)
    kernel = params["weight"].reshape(8, cin, 9)
    y = np.einsum("nckhw,ock->nohw", patches, kernel) + params["bias"][None, :, None, None]
    scale = params["bn_weight"] / np.sqrt(params["bn_var"] + EPS)
    y = (y - params["bn_mean"][None, :, None, None]) * scale[None, :, None, None] + params["bn_bias"][None, :, None, None]
    return {"y": np.maximum(y, 0)}


@c.impl("torch", backend="torch", module=True, dtypes=("float32", "float16", "bfloat16"), modes=("eager", "onnx"))
def _(params):
    import torch

    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    bn = torch.nn.BatchNorm2d(8, eps=EPS)
    with torch.no_grad():
        conv.weight.copy_(params["weight"])
        conv.bias.copy_(params["bias"])
        bn.weight.copy_(params["bn_weight"])
        bn.bias.copy_(params["bn_bias"])
        bn.running_mean.copy_(params["bn_mean"])
        bn.running_var.copy_(params["bn_var"])
    return torch.nn.Sequential(conv, bn, torch.nn.ReLU()).eval()


@c.impl("jax", backend="jax", module=True, dtypes=("float32", "float16", "bfloat16"))
def _(params):
    import jax
    import jax.numpy as jnp

    def block(x):
        y = jax.lax.conv_general_dilated(x, params["weight"], window_strides=(1, 1), padding=((1, 1), (1, 1)),
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        y = y + params["bias"][None, :, None, None]
        scale = params["bn_weight"] / jnp.sqrt(params["bn_var"] + EPS)
        y = (y - params["bn_mean"][None, :, None, None]) * scale[None, :, None, None] + params["bn_bias"][None, :, None, None]
        return jnp.maximum(y, 0)

    return block
