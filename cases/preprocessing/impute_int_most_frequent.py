"""Most-frequent imputation of integer columns with missing values, kept as int64.

An integer column cannot hold NaN: the feature store sends the values with a validity mask and a
-1 in the missing slots. sklearn's ``SimpleImputer(strategy="most_frequent")`` and ``scipy.stats.mode``
break ties by the smallest value; column 0 ties every value on purpose. ``Counter.most_common`` and
``statistics.mode`` would pick the first value seen instead, which is why the Python reference
orders by (count, -value). The vectorized forms count with a one-hot sum and take the first
``argmax``, which numpy, torch and jax all document as the first maximal index.
"""

from collections import Counter

import numpy as np

from detharness import case

N_VALUES = 20  # values are counts in 0..19 (items in a basket)


def _counts_with_missing(rng):
    values = rng.poisson(4, size=(1000, 6)).clip(0, N_VALUES - 1)
    values[:, 0] = rng.permutation(np.repeat(np.arange(N_VALUES), 1000 // N_VALUES))
    missing = rng.random(values.shape) < 0.1
    values[missing] = -1
    return {"values": values.astype("int64"), "missing": missing}


c = case(
    "preprocessing/impute_int_most_frequent",
    tags={"preprocessing"},
    description="replace missing ints by the column's most frequent value (smallest on ties), int64 out",
    inputs=_counts_with_missing,
)


@c.impl("python", backend="numpy", reference=True, dtypes=("int64",))
def _(values, missing):
    y = np.array(values, copy=True)
    for col in range(values.shape[1]):
        counts = Counter(values[~missing[:, col], col].tolist())
        y[missing[:, col], col] = min(counts, key=lambda v: (-counts[v], v))
    return {"y": y}


@c.impl("numpy", backend="numpy", dtypes=("int64",))
def _(values, missing):
    counts = ((values[..., None] == np.arange(N_VALUES)) & ~missing[..., None]).sum(0)
    return {"y": np.where(missing, counts.argmax(-1), values)}


@c.impl("torch", backend="torch", dtypes=("int64",))
def _(values, missing):
    import torch

    counts = ((values[..., None] == torch.arange(N_VALUES, device=values.device)) & ~missing[..., None]).sum(0)
    return {"y": torch.where(missing, counts.argmax(-1), values)}


@c.impl("jax", backend="jax", dtypes=("int64",))
def _(values, missing):
    import jax.numpy as jnp

    counts = ((values[..., None] == jnp.arange(N_VALUES)) & ~missing[..., None]).sum(0)
    return {"y": jnp.where(missing, counts.argmax(-1), values)}
