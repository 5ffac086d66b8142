"""One-hot encoding of integer category ids: an exact, integer-valued transform.

Any difference here is a bug, not rounding: integers are compared bit for bit.
"""

import numpy as np

from detharness import case

N_CATEGORIES = 12

c = case(
    "preprocessing/one_hot",
    tags={"preprocessing"},
    description="category ids 0..11 to a one-hot int64 matrix",
    inputs=lambda rng: {"ids": rng.integers(0, N_CATEGORIES, size=1000)},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("int64",))
def _(ids):
    return {"y": (ids[:, None] == np.arange(N_CATEGORIES)).astype(np.int64)}


@c.impl("torch", backend="torch", dtypes=("int64",))
def _(ids):
    import torch

    return {"y": torch.nn.functional.one_hot(ids, N_CATEGORIES)}


@c.impl("jax", backend="jax", dtypes=("int64",))
def _(ids):
    import jax
    import jax.numpy as jnp

    return {"y": jax.nn.one_hot(ids, N_CATEGORIES, dtype=jnp.int64)}
