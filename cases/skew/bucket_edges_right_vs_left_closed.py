"""Skew: age buckets with right-closed edges in training, left-closed in serving.

Training: ``pd.cut(age, bins=[0, 18, 25, 35, 50, 65, 120])`` makes right-closed intervals
(0, 18], (18, 25], ...; written as pandas behaves, with ``searchsorted(side="left")``. Serving:
the service ports it with ``np.digitize(age, bins)``, whose default ``right=False`` makes
left-closed intervals [18, 25): every customer whose age is exactly on an edge (18, 25, 35, 50, 65)
falls in the next bucket. (``torch.bucketize``'s ``right`` flag means the opposite of
``np.digitize``'s, a second way to get it wrong.) Fix: ``np.digitize(age, bins, right=True)``, or
ship the fitted ``KBinsDiscretizer``/encoder, and test the edges.
"""

import numpy as np

from detharness import case

EDGES = np.array([0, 18, 25, 35, 50, 65, 120])


c = case(
    "skew/bucket_edges_right_vs_left_closed",
    tags={"skew"},
    description="1000 integer ages (1..99) into 6 buckets: pd.cut's (a, b] vs np.digitize's [a, b)",
    inputs=lambda rng: {"age": rng.integers(1, 100, size=1000)},
)


@c.impl("training", backend="numpy", reference=True, dtypes=("int64",))
def _(age):
    return {"bucket": np.searchsorted(EDGES, age, side="left") - 1}  # pd.cut(...).codes


@c.impl("serving", backend="numpy", dtypes=("int64",))
def _(age):
    return {"bucket": np.digitize(age, EDGES) - 1}


c.known_divergence(
    "np.digitize's default intervals are left-closed, pd.cut's right-closed: ages on an edge move up a bucket",
    variants="*[serving:*",
    checks=("backend",),  # against the training path; serving elsewhere matches itself
)
