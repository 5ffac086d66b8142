"""Bilinear image resize without antialiasing, half-pixel centers (``align_corners=False``).

``torch.nn.functional.interpolate(mode="bilinear", antialias=False)`` (torch's default) and
``jax.image.resize(method="linear", antialias=False)`` against a float64 numpy reference that builds
each axis's weights: source coordinate ``(i + 0.5) * in / out - 0.5``, clamped at the border, two
neighbours. Downscaling by 2.7 this way reads 2 of the ~2.7 input pixels each output covers and
aliases; that is this design, and ``preprocessing/image_resize_antialias`` is the other one.
"""

import numpy as np

from detharness import case

DOWN, UP = (24, 20), (80, 72)


def _images(rng):
    return {"image": (rng.integers(0, 256, size=(2, 3, 64, 48)) / 255).astype("float32")}


def _bilinear_matrix(n_in, n_out):
    source = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
    left = np.minimum(np.floor(source).astype(int), n_in - 1)
    right = np.minimum(left + 1, n_in - 1)
    frac = source - left
    weights = np.zeros((n_out, n_in))
    np.add.at(weights, (np.arange(n_out), left), 1 - frac)
    np.add.at(weights, (np.arange(n_out), right), frac)
    return weights


def _resize(image, size):
    rows, cols = _bilinear_matrix(image.shape[2], size[0]), _bilinear_matrix(image.shape[3], size[1])
    return rows @ image @ cols.T


c = case(
    "preprocessing/image_resize_bilinear",
    tags={"preprocessing"},
    description="bilinear resize of 2 x 3 x 64 x 48 images down to 24 x 20 and up to 80 x 72, no antialias",
    inputs=_images,
    # Pixels in [0, 1] (black ones too, where ULP counts explode): judged against the image's range.
    # torch computes source coordinates in float32, an error of up to ~eps x 64 (the input's side)
    # in each weight: 2 x 6e-8 x 64 = 8e-6 bounds it (torch 3.0e-6, jax 1.2e-7 here). Half: 2 eps.
    tolerance={"float32": "scaled(8e-6)", "float16": "scaled(2e-3)", "bfloat16": "scaled(1.6e-2)"},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
def _(image):
    return {"down": _resize(image, DOWN), "up": _resize(image, UP)}


@c.impl("torch", backend="torch", dtypes=("float32", "float16", "bfloat16"))
def _(image):
    import torch.nn.functional as F

    return {"down": F.interpolate(image, size=DOWN, mode="bilinear", align_corners=False, antialias=False),
            "up": F.interpolate(image, size=UP, mode="bilinear", align_corners=False, antialias=False)}


@c.impl("jax", backend="jax", dtypes=("float32",))  # compiling resize takes ~1 s per dtype
def _(image):
    import jax

    n, ch = image.shape[:2]
    return {"down": jax.image.resize(image, (n, ch, *DOWN), method="linear", antialias=False),
            "up": jax.image.resize(image, (n, ch, *UP), method="linear", antialias=False)}
