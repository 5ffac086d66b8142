"""Skew: a 30-day spend window that includes the label day in training, only the days before it
in serving.

Training: the notebook computes ``df.rolling("30D").sum()`` on daily spend, and pandas' rolling
windows include the current row (``closed="right"``): the feature for day t sums days t-29 .. t,
the very day whose outcome is the label. Serving: the online feature store answers a request on
day t with the 30 days before it, t-30 .. t-1 (day t has not happened yet), computed in torch.
The model learned from a feature that leaked the label day and meets one that cannot. Fix: shift
the training window by one day (``closed="left"`` or ``.shift(1)``) so both sides use t-30 .. t-1,
and test features point in time.
"""

import numpy as np

from detharness import case

WINDOW = 30


def _daily_spend(rng):
    return {"spend": rng.gamma(0.5, 40.0, size=(180, 8)).astype("float32")}  # 8 customers, 180 days


c = case(
    "skew/rolling_30d_window_includes_label_day",
    tags={"skew"},
    description="30-day spend sums for days 30..179: t-29..t (training) vs t-30..t-1 (serving)",
    inputs=_daily_spend,
    # What float32 sums of 30 positive values reach when the windows match: 29 additions, each a
    # rounding of 2^-24 relative, stay under 32 ulp (2 ulp with the fix, here).
    tolerance={"float32": "ulp(32)"},
)


@c.impl("training", backend="numpy", reference=True, dtypes=("float64",))
def _(spend):
    windows = np.lib.stride_tricks.sliding_window_view(spend, WINDOW, axis=0)  # rows i .. i+29
    return {"spend_30d": windows[1:].sum(-1)}  # day t = i + 29 for t >= 30: rows t-29 .. t


@c.impl("serving", backend="torch", dtypes=("float32",))
def _(spend):
    return {"spend_30d": spend.unfold(0, WINDOW, 1)[:-1].sum(-1)}  # day t: rows t-30 .. t-1


c.known_divergence(
    "training's pandas rolling window includes the label day; serving sums the 30 days before it",
    variants="*[serving:*",
    checks=("backend",),  # against the training path; serving elsewhere matches itself
)
