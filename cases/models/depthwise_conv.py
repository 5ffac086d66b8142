"""A depthwise 3x3 convolution (``groups == channels``), the MobileNet building block.

Depthwise convs take their own kernels: oneDNN's in torch, ONNX Runtime's grouped-conv path, XLA's
feature-grouped conv, and CPUs pick different conv algorithms (onnxruntime#16275). Each output
is a 9-term sum that cancels near zero, where relative error explodes (max relative 0.667 at a max
abs of 4.8e-7 in onnxruntime#18946), so it is judged relative to the output's scale.
"""

import numpy as np

from detharness import case

CHANNELS = 16


def _params(rng):
    return {
        "weight": (rng.standard_normal((CHANNELS, 1, 3, 3)) / 3).astype("float32"),
        "bias": (0.1 * rng.standard_normal(CHANNELS)).astype("float32"),
    }


c = case(
    "models/depthwise_conv",
    tags={"model"},
    description="depthwise Conv2d(16, 16, 3x3, padding 1, groups 16) on 2 x 16 x 32 x 32",
    inputs=lambda rng: {"x": rng.standard_normal((2, CHANNELS, 32, 32)).astype("float32")},
    params=_params,
    # Worst scaled error here x3, rounded up for other CPUs' kernels: f32 1.2e-7, f16 6.3e-4, bf16 5.6e-3
    tolerance={"float32": "scaled(4e-7)", "float16": "scaled(2e-3)", "bfloat16": "scaled(2e-2)"},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
def _(x, params):
    h, w = x.shape[2:]
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = sum(params["weight"][None, :, 0, i, j, None, None] * padded[:, :, i:i + h, j:j + w]
            for i in range(3) for j in range(3))
    return {"y": y + params["bias"][None, :, None, None]}


@c.impl("torch", backend="torch", module=True, dtypes=("float32", "float16", "bfloat16"), modes=("eager", "onnx"))
def _(params):
    import torch

    conv = torch.nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, groups=CHANNELS)
    with torch.no_grad():
        conv.weight.copy_(params["weight"])
        conv.bias.copy_(params["bias"])
    return conv


@c.impl("jax", backend="jax", module=True, dtypes=("float32", "float16", "bfloat16"))
def _(params):
    import jax

    def depthwise(x):
        y = jax.lax.conv_general_dilated(x, params["weight"], window_strides=(1, 1), padding=((1, 1), (1, 1)),
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=CHANNELS)
        return y + params["bias"][None, :, None, None]

    return depthwise
