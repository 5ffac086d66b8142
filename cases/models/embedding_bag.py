"""EmbeddingBag in mean mode: the pooled sparse features of a recommender (DLRM-style), with
bags of varied length and one empty bag.

The bags are given as flat ids plus offsets; an empty bag must come out as zeros, not NaN (0/0).
torch has a fused kernel, the ONNX export a Loop over the bags, jax a segment sum. Means of
signed values cancel near zero, where ULP counts explode (400 ULP here), so they are judged
against the output's scale.
"""

import itertools

import numpy as np

from detharness import case

VOCAB, DIM, BAGS = 64, 16, 32
EMPTY_BAG = 5


def _inputs(rng):
    lengths = rng.integers(1, 8, BAGS)
    lengths[EMPTY_BAG] = 0
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype("int64")
    return {"indices": rng.integers(0, VOCAB, lengths.sum()).astype("int64"), "offsets": offsets}


c = case(
    "models/embedding_bag",
    tags={"model"},
    description="EmbeddingBag(64, 16, mode='mean') over 32 bags of 0 to 7 ids (bag 5 empty)",
    inputs=_inputs,
    params=lambda rng: {"weight": rng.standard_normal((VOCAB, DIM)).astype("float32")},
    # Worst scaled error here x3, rounded up for other CPUs' kernels: f32 6.8e-8, f16 4.1e-4, bf16 3.6e-3
    tolerance={"float32": "scaled(3e-7)", "float16": "scaled(2e-3)", "bfloat16": "scaled(2e-2)"},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
def _(indices, offsets, params):
    bounds = [*offsets, len(indices)]
    rows = [params["weight"][indices[start:end]] for start, end in itertools.pairwise(bounds)]
    return {"y": np.stack([r.mean(0) if len(r) else np.zeros(DIM) for r in rows])}


@c.impl("torch", backend="torch", module=True, dtypes=("float32", "float16", "bfloat16"), modes=("eager", "onnx"))
def _(params):
    import torch

    bag = torch.nn.EmbeddingBag(VOCAB, DIM, mode="mean")
    with torch.no_grad():
        bag.weight.copy_(params["weight"])
    return bag


@c.impl("jax", backend="jax", module=True, dtypes=("float32", "float16", "bfloat16"))
def _(params):
    import jax
    import jax.numpy as jnp

    def embedding_bag(indices, offsets):
        bag_of = jnp.searchsorted(offsets, jnp.arange(indices.shape[0]), side="right") - 1
        sums = jax.ops.segment_sum(params["weight"][indices], bag_of, num_segments=offsets.shape[0])
        counts = jax.ops.segment_sum(jnp.ones_like(indices), bag_of, num_segments=offsets.shape[0])
        return sums / jnp.maximum(counts, 1)[:, None].astype(sums.dtype)

    return embedding_bag
