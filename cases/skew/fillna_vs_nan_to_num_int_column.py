"""Skew: pandas' ``fillna(0)`` in training, ``np.nan_to_num`` in serving, on an integer column.

Training: pandas reads an integer column with missing values (``n_purchases``, NULL for new
customers) as float64 with NaN, since numpy integers cannot hold NaN; ``fillna(0)`` then gives
0.0 for the missing ones. Written here the way pandas behaves (pandas is not needed).
Serving: the online feature store sends the column as int64 with -1 in the missing slots and a
validity mask; the service calls ``np.nan_to_num`` "as training did", a no-op on an integer array,
so the model sees -1.0 where it was trained on 0.0.
Fix: apply the validity mask in serving (``np.where(missing, 0, values)``), or give the training
column a nullable integer dtype (pandas ``Int64``) so both sides treat NULL explicitly.
"""

import numpy as np

from detharness import case


def _purchases(rng):
    values = rng.poisson(3.0, size=2000)
    missing = rng.random(2000) < 0.1
    values[missing] = -1  # the feature store's NULL sentinel
    return {"n_purchases": values.astype(np.int64), "missing": missing}


c = case(
    "skew/fillna_vs_nan_to_num_int_column",
    tags={"skew"},
    description="int column with 10% NULL: fillna(0) on pandas' float64 upcast vs nan_to_num on int64",
    inputs=_purchases,
    tolerance="exact",  # small integers as float64: no rounding on either side
)


@c.impl("training", backend="numpy", reference=True, dtypes=("int64",))
def _(n_purchases, missing):
    column = np.where(missing, np.nan, n_purchases.astype(np.float64))  # pandas: int + NULL -> float64 + NaN
    return {"n_purchases": np.where(np.isnan(column), 0.0, column)}  # fillna(0)


@c.impl("serving", backend="numpy", dtypes=("int64",))
def _(n_purchases, missing):
    return {"n_purchases": np.nan_to_num(n_purchases).astype(np.float64)}


c.known_divergence(
    "nan_to_num is a no-op on an int64 column: the -1 NULL sentinel reaches the model where training "
    "saw fillna(0)'s 0.0",
    variants="*[serving:*",
    checks=("backend",),  # against the training path; serving elsewhere matches itself
)
