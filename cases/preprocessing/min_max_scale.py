"""Min-max scaling to [0, 1], column by column (sklearn's ``MinMaxScaler``).

The training notebook computes it in float64 numpy; the service in float32 numpy, torch or jax.
"""

from detharness import case


def _features(rng):
    x = rng.gamma(2.0, 3.0, size=(2048, 16)) + rng.uniform(-50, 50, size=16)
    return {"x": x.astype("float32")}


c = case(
    "preprocessing/min_max_scale",
    tags={"preprocessing"},
    description="(x - min) / (max - min) over 2048 rows of 16 features",
    inputs=_features,
    # Three roundings (x - min, max - min, the division), each relative even near 0 (x - min is exact
    # there, Sterbenz): float32 lands within 2 ulp of float64 (2 here). Half precision: 2 eps of the
    # [0, 1] range (float16 1.0e-3 and bfloat16 1.0e-2 here).
    tolerance={"float32": "ulp(4)", "float16": "scaled(2e-3)", "bfloat16": "scaled(1.6e-2)"},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64", "float32"))
def _(x):
    lo, hi = x.min(0), x.max(0)
    return {"y": (x - lo) / (hi - lo)}


@c.impl("torch", backend="torch", dtypes=("float32", "float16", "bfloat16"))
def _(x):
    lo, hi = x.amin(0), x.amax(0)
    return {"y": (x - lo) / (hi - lo)}


@c.impl("jax", backend="jax", dtypes=("float32", "bfloat16"))
def _(x):
    lo, hi = x.min(0), x.max(0)
    return {"y": (x - lo) / (hi - lo)}
