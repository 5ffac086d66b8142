"""jax's keys: threefry (the default), rbg and unsafe_rbg, with and without partitionable threefry.

jax 0.5.0 turned ``jax_threefry_partitionable`` on by default: a one-time change of every threefry
stream (and of rbg's key splitting, which runs threefry), so the ``-nonpartitionable``
implementations keep the streams of older jax. Each selects the flag with jax's own context
manager for the duration of its body; jit traces the body inside that context (the config is part
of jit's cache key), so the flag never leaks into another variant. Threefry gives the same bits
on every backend; rbg and unsafe_rbg hand the bits to XLA's RngBitGenerator, whose algorithm is
the backend's own (jax.random's documentation: not identical across CPU, GPU and TPU), so their
CUDA streams are declared known against the CPU's. Here, ``jax.random.normal(jax.random.key(0), (3,))``
= [1.623, 2.025, -0.434].
"""

import numpy as np

from detharness import case

N = 4096
SEED = 0

c = case(
    "rng/jax",
    kind="rng",
    seed=SEED,
    description="bits, normal, randint, permutation, split and fold_in from jax.random.key(0) per PRNG impl",
    inputs=lambda rng: {"like": np.zeros(0, dtype="float32")},
)
c.known_divergence(
    "rbg and unsafe_rbg draw their bits with XLA's RngBitGenerator, whose algorithm is the backend's "
    "own: not identical across CPU and GPU (jax.random documentation)",
    variants="*rbg*:cuda:*", against="*[*:cpu:*", checks=("rng",),
)


def _streams(impl, partitionable):
    def draw(like):
        import jax

        with jax.threefry_partitionable(partitionable):
            key = jax.random.key(SEED, impl=impl)
            first = jax.random.split(key)[0]
            return {
                "bits": jax.random.bits(key, (N,)),
                "normal": jax.random.normal(key, (N,), dtype=like.dtype),
                "randint": jax.random.randint(key, (N,), 0, 1000),
                "permutation": jax.random.permutation(key, 1000),
                "split": jax.random.key_data(jax.random.split(key, 4)),
                "fold_in": jax.random.key_data(jax.random.fold_in(first, 7)),
            }

    return draw


for _name, _impl, _partitionable in (
    ("threefry", "threefry2x32", True),
    ("threefry-nonpartitionable", "threefry2x32", False),
    ("rbg", "rbg", True),
    ("rbg-nonpartitionable", "rbg", False),
    ("unsafe_rbg", "unsafe_rbg", True),
):
    # jit only: eager dispatch compiles every op on its own and draws the same stream, at twice the
    # cost (~2 s a variant here, against ~1.5 s of compilation for the jitted draws).
    c.impl(_name, backend="jax", dtypes=("float32",), modes=("jit",))(_streams(_impl, _partitionable))
