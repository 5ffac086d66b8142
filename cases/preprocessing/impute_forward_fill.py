"""Forward fill of a time series, column by column (pandas' ``ffill``).

Rows are time steps; a missing reading takes the last present one. Leading NaN have nothing to
fill from and stay NaN, as in pandas. The vectorized forms carry the index of the last present row
with a running maximum (``np.maximum.accumulate``, ``torch.cummax``, ``jax.lax.cummax``) and gather.
"""

import numpy as np

from detharness import case


def _series_with_gaps(rng):
    x = rng.standard_normal((512, 8)).cumsum(0) + 50
    x[rng.random(x.shape) < 0.15] = np.nan
    x[:3, 0] = np.nan  # a leading gap: stays NaN
    return {"x": x.astype("float32")}


c = case(
    "preprocessing/impute_forward_fill",
    tags={"preprocessing"},
    description="fill NaN with the last present value above it; leading NaN stay",
    inputs=_series_with_gaps,
    tolerance="exact",  # values are copied, never computed
)


@c.impl("python", backend="numpy", reference=True, dtypes=("float32",))
def _(x):
    y = np.array(x, copy=True)
    for row in range(1, len(y)):
        gap = np.isnan(y[row])
        y[row, gap] = y[row - 1, gap]
    return {"y": y}


@c.impl("numpy", backend="numpy", dtypes=("float32",))
def _(x):
    rows = np.where(np.isnan(x), 0, np.arange(len(x))[:, None])
    return {"y": np.take_along_axis(x, np.maximum.accumulate(rows, axis=0), axis=0)}


@c.impl("torch", backend="torch", dtypes=("float32",))
def _(x):
    import torch

    steps = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(x)
    rows = torch.where(torch.isnan(x), 0, steps)
    return {"y": torch.gather(x, 0, torch.cummax(rows, dim=0).values)}


@c.impl("jax", backend="jax", dtypes=("float32",))
def _(x):
    import jax
    import jax.numpy as jnp

    steps = jnp.broadcast_to(jnp.arange(x.shape[0])[:, None], x.shape)
    rows = jnp.where(jnp.isnan(x), 0, steps)
    return {"y": jnp.take_along_axis(x, jax.lax.cummax(rows, axis=0), axis=0)}
