"""Standardization with the sample standard deviation (ddof=1, Bessel's correction).

``torch.std`` defaults to ``correction=1``; ``numpy.std`` and ``jnp.std`` to ``ddof=0`` (sklearn's
``StandardScaler`` uses ddof=0, see ``preprocessing/standardize``). A model trained with one and
served with the other sees every feature scaled by sqrt(n / (n - 1)): 5e-4 relative over 1,024
rows. The ``numpy-default`` implementation ports the torch code without the argument, declared
below as a known divergence.
"""

from detharness import case

c = case(
    "preprocessing/standardize_ddof1",
    tags={"preprocessing"},
    description="(x - mean) / std(ddof=1) over 1024 rows of 16 features",
    inputs=lambda rng: {"x": (rng.standard_normal((1024, 16)) * 10 + 3).astype("float32")},
    # Standardized values cross zero, where ULP counts explode: judged by the error relative to the
    # output's scale, as preprocessing/standardize (float32 lands within 3e-7 of float64 here).
    tolerance={"float32": "scaled(2e-6)", "float16": "close(4e-3, 1e-3)", "bfloat16": "close(3e-2, 1e-2)"},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64", "float32"))
def _(x):
    return {"y": (x - x.mean(0)) / x.std(0, ddof=1)}


@c.impl("torch", backend="torch", dtypes=("float32", "float16", "bfloat16"))
def _(x):
    return {"y": (x - x.mean(0)) / x.std(0)}  # torch's default: correction=1


@c.impl("jax", backend="jax", dtypes=("float32",))
def _(x):
    import jax.numpy as jnp

    return {"y": (x - jnp.mean(x, 0)) / jnp.std(x, 0, ddof=1)}


@c.impl("numpy-default", backend="numpy", dtypes=("float32",))
def _(x):
    return {"y": (x - x.mean(0)) / x.std(0)}


c.known_divergence(
    "numpy.std defaults to ddof=0, torch.std to correction=1: a port without the argument rescales "
    "each feature by sqrt(n / (n - 1))",
    variants="*[numpy-default:*",
    checks=("backend",),  # against the reference; elsewhere it matches itself
)
