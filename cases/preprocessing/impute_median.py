"""Median imputation of missing values, column by column (sklearn's ``SimpleImputer(strategy="median")``).

A tenth of the values are NaN; 1,001 rows leave some columns with an even count of present values,
where the median is the mean of the two middle values in numpy, jax and ``torch.nanquantile``.
``torch.nanmedian`` instead returns the lower of the two (documented in ``torch.median``): a port
that picks it imputes other values, declared below as a known divergence.
"""

import numpy as np

from detharness import case


def _with_missing(rng):
    x = rng.standard_normal((1001, 16)) * 5 + 20
    x[rng.random(x.shape) < 0.1] = np.nan
    return {"x": x.astype("float32")}


c = case(
    "preprocessing/impute_median",
    tags={"preprocessing"},
    description="replace NaN by the column median of the present values",
    inputs=_with_missing,
    # Present values are copied bit for bit; a median is one input value or the float32 midpoint of
    # two, a single rounding away from float64's, and values stay near 20, far from zero.
    tolerance={"float32": "ulp(1)"},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64", "float32"))
def _(x):
    return {"y": np.where(np.isnan(x), np.nanmedian(x, axis=0), x)}


@c.impl("torch", backend="torch", dtypes=("float32",))
def _(x):
    import torch

    return {"y": torch.where(torch.isnan(x), torch.nanquantile(x, 0.5, dim=0), x)}


@c.impl("torch-nanmedian", backend="torch", dtypes=("float32",))
def _(x):
    import torch

    return {"y": torch.where(torch.isnan(x), torch.nanmedian(x, dim=0).values, x)}


@c.impl("jax", backend="jax", dtypes=("float32",))
def _(x):
    import jax.numpy as jnp

    return {"y": jnp.where(jnp.isnan(x), jnp.nanmedian(x, axis=0), x)}


c.known_divergence(
    "torch.nanmedian returns the lower of the two middle values for an even count (torch.median docs); "
    "numpy, jax and torch.nanquantile(0.5) average them",
    variants="*[torch-nanmedian:*",
    checks=("backend",),  # against the reference; elsewhere it matches itself
)
