"""AvgPool2d(3, stride 2, padding 1) with torch's default ``count_include_pad=True``: border windows
divide by 9, padding included (Keras and TF exclude the padding, a skew when porting a model).

A 9-term mean of signed values cancels near zero, where ULP counts explode (800 ULP here), so it
is judged against the output's scale.
"""

import numpy as np

from detharness import case

c = case(
    "models/avg_pool",
    tags={"model"},
    description="avg_pool2d, 3x3 window, stride 2, padding 1 (counted), on 4 x 8 x 32 x 32",
    inputs=lambda rng: {"x": rng.standard_normal((4, 8, 32, 32)).astype("float32")},
    # Worst scaled error here x3, rounded up for other CPUs' kernels: f32 1.3e-7, f16 1.6e-3, bf16 9.7e-3
    tolerance={"float32": "scaled(4e-7)", "float16": "scaled(5e-3)", "bfloat16": "scaled(3e-2)"},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
def _(x):
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = [padded[:, :, i:i + 32:2, j:j + 32:2] for i in range(3) for j in range(3)]
    return {"y": np.sum(windows, axis=0) / 9}


@c.impl("torch", backend="torch", module=True, dtypes=("float32", "float16", "bfloat16"), modes=("eager", "onnx"))
def _(params):
    import torch

    return torch.nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=True)


@c.impl("jax", backend="jax", dtypes=("float32", "float16", "bfloat16"))
def _(x):
    import jax
    import jax.numpy as jnp

    sums = jax.lax.reduce_window(x, jnp.array(0, x.dtype), jax.lax.add, (1, 1, 3, 3), (1, 1, 2, 2),
                                 ((0, 0), (0, 0), (1, 1), (1, 1)))
    return {"y": sums / 9}
