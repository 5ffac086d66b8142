"""Quantization to int8, rounding ties away from zero: ``clip(round_half_away(x / scale) + zp, -128, 127)``.

The rule of C's ``roundf`` and ``std::round`` (and of many hand-written serving kernels). numpy and
torch have no such rounding function: ``sign(v) * floor(|v| + 0.5)``, exact here since
``|v| + 0.5`` needs no rounding below 2^23; jax has ``lax.round(..., AWAY_FROM_ZERO)``; the Python
reference works on float64. Half to even is ``preprocessing/quantize_int8_half_even``.
"""

import math

import numpy as np

from detharness import case

SCALE, ZERO_POINT = 1 / 16, 3


def _activations(rng):
    ties = (rng.integers(-2200, 2200, size=2048) + 0.5) * SCALE  # beyond the int8 range too
    x = np.where(rng.random(2048) < 1 / 3, ties, rng.uniform(-9, 9, size=2048))
    return {"x": x.astype("float32")}


c = case(
    "preprocessing/quantize_int8_half_away",
    tags={"preprocessing"},
    description="2048 float32 activations to int8 with scale 1/16, zero point 3, ties away from zero",
    inputs=_activations,
)


@c.impl("python", backend="numpy", reference=True, dtypes=("float32",))
def _(x):
    q = [math.copysign(math.floor(abs(v) + 0.5), v) + ZERO_POINT for v in (x.astype(np.float64) / SCALE).tolist()]
    return {"q": np.clip(q, -128, 127).astype(np.int8)}


@c.impl("numpy", backend="numpy", dtypes=("float32",))
def _(x):
    v = x / np.float32(SCALE)
    return {"q": np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5) + ZERO_POINT, -128, 127).astype(np.int8)}


@c.impl("torch", backend="torch", dtypes=("float32",))
def _(x):
    import torch

    v = x / SCALE
    return {"q": torch.clamp(torch.sign(v) * torch.floor(v.abs() + 0.5) + ZERO_POINT, -128, 127).to(torch.int8)}


@c.impl("jax", backend="jax", dtypes=("float32",))
def _(x):
    import jax
    import jax.numpy as jnp

    v = jax.lax.round(x / SCALE, jax.lax.RoundingMethod.AWAY_FROM_ZERO)
    return {"q": jnp.clip(v + ZERO_POINT, -128, 127).astype(jnp.int8)}
