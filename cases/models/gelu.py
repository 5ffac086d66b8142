"""GELU, erf form: ``x * (1 + erf(x / sqrt 2)) / 2``.

Near zero the output is tiny and ULP counts explode (torch vs jax: 51,635 ULP at worst here), so
float32 is judged by ULP or by error relative to the output's scale. The tanh approximation differs
from the erf form by about 1.5e-4 at x = -1 (apache/tvm#18750): mixing the two is a skew, not noise.
"""

import math

import numpy as np

from detharness import case

c = case(
    "models/gelu",
    tags={"model"},
    description="exact (erf) GELU over 64 x 1024 values in [-6, 6]",
    inputs=lambda rng: {"x": rng.uniform(-6, 6, size=(64, 1024)).astype("float32")},
    tolerance={"float32": "ulp(8) | scaled(1e-6)", "float16": "close(2e-3, 1e-3)", "bfloat16": "close(1.6e-2, 1e-2)"},
)

_erf = np.vectorize(math.erf, otypes=[np.float64])


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
def _(x):
    return {"y": x * 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))}


@c.impl("torch", backend="torch", dtypes=("float32", "float16", "bfloat16"))
def _(x):
    import torch

    return {"y": torch.nn.functional.gelu(x, approximate="none")}


@c.impl("jax", backend="jax", dtypes=("float32", "bfloat16"))
def _(x):
    import jax

    return {"y": jax.nn.gelu(x, approximate=False)}
