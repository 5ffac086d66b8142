"""Zero imputation: pandas' ``fillna(0)``, re-implemented with ``nan_to_num``.

``fillna(0)`` replaces NaN only. ``nan_to_num``'s defaults (numpy, torch and jax alike) also turn
+-inf into the largest finite float, so a sensor's overflow marker becomes 3.4e38 in serving while
training kept inf: the ``nan_to_num-defaults`` implementation is declared a known divergence.
Passing ``posinf``/``neginf`` explicitly makes them agree bit for bit.
"""

import numpy as np

from detharness import case


def _with_missing(rng):
    x = rng.standard_normal((2048, 16)) * 5 + 1
    x[rng.random(x.shape) < 0.1] = np.nan
    x[rng.random(x.shape) < 0.002] = np.inf
    x[rng.random(x.shape) < 0.002] = -np.inf
    return {"x": x.astype("float32")}


c = case(
    "preprocessing/impute_zero",
    tags={"preprocessing"},
    description="replace NaN by 0, keeping +-inf (pandas fillna(0))",
    inputs=_with_missing,
    tolerance="exact",  # values are copied or set to 0: no arithmetic to round
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64", "float32"))
def _(x):
    return {"y": np.where(np.isnan(x), 0, x)}


@c.impl("torch", backend="torch", dtypes=("float32",))
def _(x):
    import torch

    return {"y": torch.nan_to_num(x, nan=0.0, posinf=float("inf"), neginf=float("-inf"))}


@c.impl("jax", backend="jax", dtypes=("float32",))
def _(x):
    import jax.numpy as jnp

    return {"y": jnp.nan_to_num(x, nan=0.0, posinf=jnp.inf, neginf=-jnp.inf)}


@c.impl("nan_to_num-defaults", backend="numpy", dtypes=("float32",))
def _(x):
    return {"y": np.nan_to_num(x)}


c.known_divergence(
    "nan_to_num's defaults also replace +-inf by the largest finite float; fillna(0) keeps inf",
    variants="*[nan_to_num-defaults:*",
    checks=("backend",),  # against the reference; elsewhere it matches itself
)
