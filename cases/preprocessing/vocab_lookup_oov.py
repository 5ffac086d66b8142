"""Vocabulary lookup of raw token ids, out-of-vocabulary ids to hashed OOV buckets.

As ``tf.lookup.StaticVocabularyTable`` with ``num_oov_buckets``: a known id maps to its index in the
vocabulary, an unknown one to ``len(vocabulary) + id % N_OOV``. The vocabulary is sorted, so every
backend finds an id with a binary search (``searchsorted``); the Python reference uses a dict.
"""

import numpy as np

from detharness import case

N_OOV = 8


def _ids(rng):
    vocabulary = np.sort(rng.choice(1_000_000, size=1000, replace=False))
    known = rng.choice(vocabulary, size=(64, 32))
    unknown = rng.integers(0, 1_000_000, size=(64, 32))  # 0.1% of these are in the vocabulary too
    ids = np.where(rng.random((64, 32)) < 0.3, unknown, known)
    return {"ids": ids.astype("int64"), "vocabulary": vocabulary.astype("int64")}


c = case(
    "preprocessing/vocab_lookup_oov",
    tags={"preprocessing"},
    description="64 x 32 raw ids to vocabulary indices (1,000 entries) or one of 8 OOV buckets",
    inputs=_ids,
)


@c.impl("python", backend="numpy", reference=True, dtypes=("int64",))
def _(ids, vocabulary):
    index = {int(v): i for i, v in enumerate(vocabulary)}
    rows = [[index.get(i, len(index) + i % N_OOV) for i in row] for row in ids.tolist()]
    return {"y": np.array(rows, dtype=np.int64)}


@c.impl("numpy", backend="numpy", dtypes=("int64",))
def _(ids, vocabulary):
    index = np.searchsorted(vocabulary, ids).clip(max=len(vocabulary) - 1)
    return {"y": np.where(vocabulary[index] == ids, index, len(vocabulary) + ids % N_OOV)}


@c.impl("torch", backend="torch", dtypes=("int64",))
def _(ids, vocabulary):
    import torch

    index = torch.searchsorted(vocabulary, ids).clamp(max=len(vocabulary) - 1)
    return {"y": torch.where(vocabulary[index] == ids, index, len(vocabulary) + ids % N_OOV)}


@c.impl("jax", backend="jax", dtypes=("int64",))
def _(ids, vocabulary):
    import jax.numpy as jnp

    index = jnp.searchsorted(vocabulary, ids).clip(max=len(vocabulary) - 1)
    return {"y": jnp.where(vocabulary[index] == ids, index, len(vocabulary) + ids % N_OOV)}
