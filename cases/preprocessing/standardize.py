"""Standardization (z-score) of features, the first step of most tabular pipelines.

The training notebook computes it in float64 numpy; the service in float32 torch or jax. The
reference is float64; float16 and bfloat16 variants show what lower precision costs.
"""

from detharness import case

c = case(
    "preprocessing/standardize",
    tags={"preprocessing"},
    description="(x - mean) / std over 4096 rows of 32 features with offset and scale",
    inputs=lambda rng: {"x": (rng.standard_normal((4096, 32)) * 10 + 3).astype("float32")},
    # Standardized values cross zero, where ULP counts explode (600,000 ulp for float32 numpy against
    # float64): the error relative to the output's scale is the judge, ~7.6e-7 at worst here.
    tolerance={"float32": "scaled(2e-6)", "float16": "close(4e-3, 1e-3)", "bfloat16": "close(3e-2, 1e-2)"},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64", "float32"))
def _(x):
    return {"y": (x - x.mean(0)) / x.std(0)}


@c.impl("torch", backend="torch", dtypes=("float32", "float16", "bfloat16"))
def _(x):
    return {"y": (x - x.mean(0)) / x.std(0, unbiased=False)}


@c.impl("jax", backend="jax", dtypes=("float32", "bfloat16"))
def _(x):
    import jax.numpy as jnp

    return {"y": (x - jnp.mean(x, 0)) / jnp.std(x, 0)}
