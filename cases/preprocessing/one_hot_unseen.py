"""One-hot encoding against a fitted vocabulary, with categories the fit never saw.

Serving meets merchant category codes that training did not: sklearn's
``OneHotEncoder(handle_unknown="ignore")`` encodes them as an all-zero row. Each backend gets there
differently: numpy compares against the vocabulary, ``torch.nn.functional.one_hot`` raises on an
index outside [0, K) so the unseen go to an extra column that is dropped, and ``jax.nn.one_hot``
encodes an out-of-range index as zeros (documented). Integers are compared bit for bit.
"""

import numpy as np

from detharness import case

# The fitted vocabulary: sorted merchant category codes (ISO 18245).
VOCABULARY = np.array([4111, 4121, 4511, 5311, 5411, 5541, 5734, 5812, 5814, 5912, 5999, 7011])


def _codes(rng):
    seen = rng.choice(VOCABULARY, size=1000)
    unseen = rng.choice([4814, 5200, 5691, 7832], size=1000)  # telecom, hardware, clothing, cinema
    return {"codes": np.where(rng.random(1000) < 0.1, unseen, seen).astype("int64")}


c = case(
    "preprocessing/one_hot_unseen",
    tags={"preprocessing"},
    description="12-code vocabulary to one-hot int64; unseen codes (10%) give an all-zero row",
    inputs=_codes,
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("int64",))
def _(codes):
    return {"y": (codes[:, None] == VOCABULARY).astype(np.int64)}


@c.impl("torch", backend="torch", dtypes=("int64",))
def _(codes):
    import torch

    vocabulary = torch.from_numpy(VOCABULARY).to(codes.device)
    index = torch.searchsorted(vocabulary, codes).clamp(max=len(vocabulary) - 1)
    index = torch.where(vocabulary[index] == codes, index, len(vocabulary))
    return {"y": torch.nn.functional.one_hot(index, len(vocabulary) + 1)[:, :-1]}


@c.impl("jax", backend="jax", dtypes=("int64",))
def _(codes):
    import jax
    import jax.numpy as jnp

    vocabulary = jnp.asarray(VOCABULARY)
    index = jnp.searchsorted(vocabulary, codes).clip(max=len(vocabulary) - 1)
    index = jnp.where(vocabulary[index] == codes, index, -1)
    return {"y": jax.nn.one_hot(index, len(vocabulary), dtype=jnp.int64)}
