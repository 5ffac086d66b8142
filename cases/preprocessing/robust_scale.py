"""Robust scaling: subtract the median, divide by the interquartile range (sklearn's ``RobustScaler``).

Quantiles use linear interpolation between order statistics in numpy, torch and jax alike. float32
interpolation rounds the quantiles themselves, so values near the median (outputs near zero) carry
their absolute error: judged relative to the output's scale.
"""

import numpy as np

from detharness import case


def _heavy_tailed(rng):
    x = rng.standard_t(3, size=(2048, 16)) * 4 + rng.uniform(-10, 10, size=16)
    return {"x": x.astype("float32")}


c = case(
    "preprocessing/robust_scale",
    tags={"preprocessing"},
    description="(x - median) / (q75 - q25) over 2048 rows of 16 heavy-tailed features",
    inputs=_heavy_tailed,
    # A few float32 roundings (eps 6e-8) of the interpolated median and quartiles, carried by every
    # output: 21,347 ulp near zero but 5.9e-8 of the output's scale here. Half precision: 2 eps
    # (5.2e-4 and 2.6e-3 here).
    tolerance={"float32": "scaled(5e-7)", "float16": "scaled(2e-3)", "bfloat16": "scaled(1.6e-2)"},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64", "float32"))
def _(x):
    # q of x's dtype: a float64 q would promote a float32 variant's whole computation (NEP 50).
    q25, median, q75 = np.quantile(x, np.array([0.25, 0.5, 0.75], dtype=x.dtype), axis=0)
    return {"y": (x - median) / (q75 - q25)}


@c.impl("torch", backend="torch", dtypes=("float32", "float16", "bfloat16"))
def _(x):
    import torch

    # torch.quantile takes float32 or float64 only: half precision variants interpolate in float32.
    q25, median, q75 = torch.quantile(x.float(), torch.tensor([0.25, 0.5, 0.75], device=x.device), dim=0).to(x.dtype)
    return {"y": (x - median) / (q75 - q25)}


@c.impl("jax", backend="jax", dtypes=("float32",))
def _(x):
    import jax.numpy as jnp

    q25, median, q75 = jnp.quantile(x, jnp.array([0.25, 0.5, 0.75]), axis=0)
    return {"y": (x - median) / (q75 - q25)}
