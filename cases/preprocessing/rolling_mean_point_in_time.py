"""A 7-day rolling mean computed point in time: the feature for day t uses days t-7 .. t-1 only.

Daily spend of 16 customers over a year; the first 7 days have no full window and are NaN. The
float64 reference uses prefix sums; the float32 implementations sum each window directly
(``sliding_window_view``, ``Tensor.unfold``, ``lax.reduce_window``). pandas' ``rolling(7).mean()``
includes the current row unless shifted: the ``with-leakage`` implementation forgets the shift and
sees the day it should predict, declared a known divergence (see also
``skew/rolling_30d_window_includes_label_day``).
"""

import numpy as np

from detharness import case

WINDOW = 7


def _daily_spend(rng):
    return {"spend": rng.gamma(2.0, 20.0, size=(365, 16)).astype("float32")}


c = case(
    "preprocessing/rolling_mean_point_in_time",
    tags={"preprocessing"},
    description="mean of the previous 7 days of 365 x 16 daily values; NaN for the first 7 days",
    inputs=_daily_spend,
    # Six additions of positive values and a division: at most ~7 roundings of 2^-24 relative, under
    # 8 ulp whatever the summation order (3 here).
    tolerance={"float32": "ulp(8)"},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
def _(spend):
    prefix = np.concatenate([np.zeros((1, spend.shape[1])), np.cumsum(spend, axis=0)])
    y = np.full(spend.shape, np.nan)
    y[WINDOW:] = (prefix[WINDOW:-1] - prefix[:-WINDOW - 1]) / WINDOW
    return {"y": y}


@c.impl("numpy-windows", backend="numpy", dtypes=("float32",))
def _(spend):
    windows = np.lib.stride_tricks.sliding_window_view(spend, WINDOW, axis=0)  # rows i .. i+6
    y = np.full(spend.shape, np.nan, dtype=spend.dtype)
    y[WINDOW:] = windows[:-1].mean(-1)
    return {"y": y}


@c.impl("torch", backend="torch", dtypes=("float32",))
def _(spend):
    import torch

    past = spend.unfold(0, WINDOW, 1)[:-1].mean(-1)
    return {"y": torch.cat([torch.full((WINDOW, spend.shape[1]), float("nan"), device=spend.device), past])}


@c.impl("jax", backend="jax", dtypes=("float32",))
def _(spend):
    import jax
    import jax.numpy as jnp

    sums = jax.lax.reduce_window(spend, 0.0, jax.lax.add, (WINDOW, 1), (1, 1), "VALID")
    return {"y": jnp.concatenate([jnp.full((WINDOW, spend.shape[1]), jnp.nan), sums[:-1] / WINDOW])}


@c.impl("with-leakage", backend="numpy", dtypes=("float32",))
def _(spend):
    windows = np.lib.stride_tricks.sliding_window_view(spend, WINDOW, axis=0)
    y = np.full(spend.shape, np.nan, dtype=spend.dtype)
    y[WINDOW:] = windows[1:].mean(-1)  # rows t-6 .. t: today included
    return {"y": y}


c.known_divergence(
    "the window includes the current day (rolling(7).mean() without shift(1)): the feature leaks the "
    "value it should predict",
    variants="*[with-leakage:*",
    checks=("backend",),  # against the reference; elsewhere it matches itself
)
