"""MaxPool2d(3, stride 2, padding 1): a comparison, no arithmetic, so every backend and dtype must
agree bit for bit with the float64 reference rounded to its dtype (rounding is monotonic, so the
max of rounded values is the rounded max). Any difference is a bug in padding or window placement,
never rounding, so the tolerance is ``ulp(0)``.
"""

import numpy as np

from detharness import case

c = case(
    "models/max_pool",
    tags={"model"},
    description="max_pool2d, 3x3 window, stride 2, padding 1, on 4 x 8 x 32 x 32",
    inputs=lambda rng: {"x": rng.standard_normal((4, 8, 32, 32)).astype("float32")},
    tolerance="ulp(0)",
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
def _(x):
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    windows = [padded[:, :, i:i + 32:2, j:j + 32:2] for i in range(3) for j in range(3)]
    return {"y": np.max(windows, axis=0)}


@c.impl("torch", backend="torch", module=True, dtypes=("float32", "float16", "bfloat16"), modes=("eager", "onnx"))
def _(params):
    import torch

    return torch.nn.MaxPool2d(3, stride=2, padding=1)


@c.impl("jax", backend="jax", dtypes=("float32", "float16", "bfloat16"))
def _(x):
    import jax
    import jax.numpy as jnp

    return {"y": jax.lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), jax.lax.max, (1, 1, 3, 3), (1, 1, 2, 2),
                                       ((0, 0), (0, 0), (1, 1), (1, 1)))}
