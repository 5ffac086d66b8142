"""Mean imputation of missing values, column by column.

A tenth of the values are NaN. Training fills them with the column's mean over the present values
(pandas' ``fillna(df.mean())``); serving re-implements it with ``nanmean``.
"""

import numpy as np

from detharness import case


def _with_missing(rng):
    x = rng.standard_normal((2048, 16)) * 5 + 1
    x[rng.random(x.shape) < 0.1] = np.nan
    return {"x": x.astype("float32")}


c = case(
    "preprocessing/impute_mean",
    tags={"preprocessing"},
    description="replace NaN by the column mean of the present values",
    inputs=_with_missing,
    # The present values are copied bit for bit; the imputed means are float32 sums of ~1,800 values.
    tolerance={"float32": "ulp(4) | scaled(2e-7)"},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64", "float32"))
def _(x):
    return {"y": np.where(np.isnan(x), np.nanmean(x, axis=0), x)}


@c.impl("torch", backend="torch", dtypes=("float32",))
def _(x):
    import torch

    return {"y": torch.where(torch.isnan(x), torch.nanmean(x, dim=0), x)}


@c.impl("jax", backend="jax", dtypes=("float32",))
def _(x):
    import jax.numpy as jnp

    return {"y": jnp.where(jnp.isnan(x), jnp.nanmean(x, axis=0), x)}
