"""Ordinal encoding of string categories, unknown ones to -1.

sklearn's ``OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)`` numbers the
sorted categories; Python and numpy both sort strings by code point. The harness hands strings to
every backend as fixed-width UTF-32 code points (uint32, zero-padded), so torch and jax can match
them too, row against vocabulary entry. "Zu\\u0308rich" (decomposed u-umlaut) is not "Zürich":
exact string matching needs one Unicode normalization on both sides (``preprocessing/text_normalize``).
"""

import numpy as np

from detharness import case

WIDTH = 16
VOCABULARY = sorted(["Berlin", "Kraków", "London", "New York", "São Paulo", "Zürich", "Åre", "Ōsaka"])


def _code_points(strings):
    return np.array(strings, dtype=f"<U{WIDTH}").view(np.uint32).reshape(len(strings), WIDTH)


def _strings(code_points):
    return np.ascontiguousarray(code_points).view(f"<U{WIDTH}")[:, 0]


def _cities(rng):
    unseen = ["Paris", "Zu\u0308rich", "berlin", "Osaka"]
    return {"city": _code_points(rng.choice(VOCABULARY + unseen, size=500))}


c = case(
    "preprocessing/ordinal_encode",
    tags={"preprocessing"},
    description="8 city names to their index in sorted order; unknown names to -1",
    inputs=_cities,
)


@c.impl("python", backend="numpy", reference=True, dtypes=("uint32",))
def _(city):
    index = {name: i for i, name in enumerate(VOCABULARY)}
    return {"y": np.array([index.get(name, -1) for name in _strings(city)], dtype=np.int64)}


@c.impl("numpy", backend="numpy", dtypes=("uint32",))
def _(city):
    names, vocabulary = _strings(city), np.array(VOCABULARY)
    index = np.searchsorted(vocabulary, names).clip(max=len(vocabulary) - 1)
    return {"y": np.where(vocabulary[index] == names, index, -1).astype(np.int64)}


@c.impl("torch", backend="torch", dtypes=("uint32",))
def _(city):
    import torch

    vocabulary = torch.from_numpy(_code_points(VOCABULARY).astype(np.int64)).to(city.device)
    match = (city.long()[:, None, :] == vocabulary[None]).all(-1)
    return {"y": torch.where(match.any(-1), match.long().argmax(-1), -1)}


@c.impl("jax", backend="jax", dtypes=("uint32",))
def _(city):
    import jax.numpy as jnp

    match = (city[:, None, :] == jnp.asarray(_code_points(VOCABULARY))[None]).all(-1)
    return {"y": jnp.where(match.any(-1), match.argmax(-1), -1).astype(jnp.int64)}
