"""Clip then log-transform a heavy-tailed amount: ``log1p(clip(x, 0, 10,000))``.

Refunds (negative amounts) clip to 0, outliers to the cap, NaN stays NaN (``np.clip``,
``torch.clamp`` and ``jnp.clip`` all propagate it). ``log1p`` is accurate for tiny amounts, where
``log(1 + x)`` first rounds ``1 + x`` to float32 and loses them (x = 1e-8 gives 0, not 1e-8): the
``log-of-1-plus-x`` implementation, declared a known divergence.
"""

import numpy as np

from detharness import case

CAP = 10_000.0


def _amounts(rng):
    x = np.minimum(rng.lognormal(2.0, 3.0, size=4096), 50_000)  # float16 holds at most 65,504
    x[rng.random(4096) < 0.05] *= -1  # refunds
    x[rng.random(4096) < 0.01] = np.nan
    return {"x": x.astype("float32")}


c = case(
    "preprocessing/clip_log1p",
    tags={"preprocessing"},
    description="log1p(clip(x, 0, 1e4)) of 4096 log-normal amounts from 1e-6 to 5e4, with refunds and NaN",
    inputs=_amounts,
    # Outputs are >= 0 and log1p is within an ulp or two in every libm, tiny x included: ULP is the
    # judge (2 here). Half precision: rounding the input moves log1p by at most that relative
    # amount, so 1 ulp plus the output's rounding (1 here).
    tolerance={"float32": "ulp(4)", "float16": "ulp(2)", "bfloat16": "ulp(2)"},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64", "float32"))
def _(x):
    return {"y": np.log1p(np.clip(x, 0, CAP))}


@c.impl("torch", backend="torch", dtypes=("float32", "float16", "bfloat16"))
def _(x):
    import torch

    return {"y": torch.log1p(torch.clamp(x, 0, CAP))}


@c.impl("jax", backend="jax", dtypes=("float32", "bfloat16"))
def _(x):
    import jax.numpy as jnp

    return {"y": jnp.log1p(jnp.clip(x, 0, CAP))}


@c.impl("log-of-1-plus-x", backend="numpy", dtypes=("float32",))
def _(x):
    return {"y": np.log(1 + np.clip(x, 0, CAP))}


c.known_divergence(
    "log(1 + x) rounds 1 + x first: amounts below float32's epsilon are lost, small ones carry its "
    "rounding error (log1p does not)",
    variants="*[log-of-1-plus-x:*",
    checks=("backend",),  # against the reference; elsewhere it matches itself
)
