"""Feature hashing of string features into 1,000 buckets with a stable hash (32-bit FNV-1a).

``"city=Kraków"`` goes to ``fnv1a_32(utf8 bytes) % 1000`` in training and serving alike, whatever the
process, machine or language: the hash is fixed arithmetic on the UTF-8 bytes (sklearn's
``FeatureHasher`` does the same with MurmurHash3, seed 0). Strings travel as zero-padded UTF-8
bytes plus lengths, so torch (int64 arithmetic masked to 32 bits) and jax (uint32, which wraps)
hash them too. Python's salted ``hash()`` is the trap: see ``preprocessing/feature_hashing_salted``.
"""

import numpy as np

from detharness import case

N_BUCKETS = 1000
WIDTH = 32  # bytes
FNV_OFFSET, FNV_PRIME = 0x811C9DC5, 0x01000193

VALUES = {
    "city": ["Berlin", "Kraków", "São Paulo", "Zürich", "東京", "Ōsaka", "Reykjavík"],
    "device": ["android", "ios", "web", "smart-tv"],
    "query": ["naïve bayes", "café", "straße", "crème brûlée", "🙂", "größe", "ǅemal"],
}


def _utf8_features(rng):
    names = rng.choice(sorted(VALUES), size=512)
    strings = [f"{name}={rng.choice(VALUES[name])}" for name in names]
    encoded = [s.encode("utf-8") for s in strings]
    utf8 = np.zeros((len(encoded), WIDTH), dtype=np.uint8)
    for row, data in enumerate(encoded):
        utf8[row, :len(data)] = np.frombuffer(data, dtype=np.uint8)
    return {"utf8": utf8, "length": np.array([len(d) for d in encoded], dtype=np.int64)}


c = case(
    "preprocessing/feature_hashing",
    tags={"preprocessing"},
    description="512 'name=value' strings to FNV-1a 32-bit hash mod 1000",
    inputs=_utf8_features,
)


@c.impl("python", backend="numpy", reference=True, dtypes=("uint8",))
def _(utf8, length):
    buckets = []
    for row, n in zip(utf8, length, strict=True):
        h = FNV_OFFSET
        for byte in bytes(row[:n]):
            h = ((h ^ byte) * FNV_PRIME) & 0xFFFFFFFF
        buckets.append(h % N_BUCKETS)
    return {"bucket": np.array(buckets, dtype=np.int64)}


@c.impl("numpy", backend="numpy", dtypes=("uint8",))
def _(utf8, length):
    h = np.full(len(utf8), FNV_OFFSET, dtype=np.uint32)
    for j in range(utf8.shape[1]):
        h = np.where(j < length, (h ^ utf8[:, j]) * np.uint32(FNV_PRIME), h)  # uint32 arrays wrap
    return {"bucket": (h % N_BUCKETS).astype(np.int64)}


@c.impl("torch", backend="torch", dtypes=("uint8",))
def _(utf8, length):
    import torch

    # torch has few uint32 kernels: int64 holds the 32-bit state, and the product (< 2**57) exactly.
    h = torch.full((len(utf8),), FNV_OFFSET, dtype=torch.int64, device=utf8.device)
    for j in range(utf8.shape[1]):
        h = torch.where(j < length, ((h ^ utf8[:, j].long()) * FNV_PRIME) & 0xFFFFFFFF, h)
    return {"bucket": h % N_BUCKETS}


@c.impl("jax", backend="jax", dtypes=("uint8",))
def _(utf8, length):
    import jax.numpy as jnp

    h = jnp.full(len(utf8), FNV_OFFSET, dtype=jnp.uint32)
    for j in range(utf8.shape[1]):
        h = jnp.where(j < length, (h ^ utf8[:, j].astype(jnp.uint32)) * jnp.uint32(FNV_PRIME), h)
    return {"bucket": (h % N_BUCKETS).astype(jnp.int64)}
