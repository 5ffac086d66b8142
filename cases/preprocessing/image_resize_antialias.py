"""Antialiased bilinear downscale, as PIL's ``Image.resize(BILINEAR)``: a triangle filter widened by
the scale factor, normalized, border pixels clipped.

``torch.nn.functional.interpolate(antialias=True)`` (PIL-compatible since torch 1.11) and
``jax.image.resize(antialias=True)`` against a float64 numpy reference of that filter. torch's
default is ``antialias=False``: a model trained on PIL-resized images and served on tensor-resized
ones loses accuracy, ResNet-18 top-1 68.934 vs 69.752 (shift-happens-benchmark/icml-2022#62), and
DALI vs PIL differs by more than 10/255 per pixel (NVIDIA/DALI#422). That default is the
``torch-default`` implementation, declared a known divergence.
"""

import numpy as np

from detharness import case

SIZE = (24, 20)


def _images(rng):
    return {"image": (rng.integers(0, 256, size=(2, 3, 64, 48)) / 255).astype("float32")}


def _triangle_matrix(n_in, n_out):
    scale = n_in / n_out
    support = max(scale, 1.0)  # the filter widens only when downscaling
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        taps = np.maximum(1 - np.abs((np.arange(lo, hi) + 0.5 - center) / support), 0)
        weights[i, lo:hi] = taps / taps.sum()
    return weights


c = case(
    "preprocessing/image_resize_antialias",
    tags={"preprocessing"},
    description="antialiased bilinear downscale of 2 x 3 x 64 x 48 images to 24 x 20 (PIL's filter)",
    inputs=_images,
    # Pixels in [0, 1] (black ones too, where ULP counts explode): judged against the image's range.
    # torch computes source coordinates in float32, an error of up to ~eps x 64 (the input's side)
    # in each weight: 2 x 6e-8 x 64 = 8e-6 bounds it (torch 9.6e-7, jax 1.3e-7 here).
    tolerance={"float32": "scaled(8e-6)"},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
def _(image):
    rows, cols = _triangle_matrix(image.shape[2], SIZE[0]), _triangle_matrix(image.shape[3], SIZE[1])
    return {"y": rows @ image @ cols.T}


@c.impl("torch", backend="torch", dtypes=("float32",))  # no float16/bfloat16 antialias kernel on CPU
def _(image):
    import torch.nn.functional as F

    return {"y": F.interpolate(image, size=SIZE, mode="bilinear", align_corners=False, antialias=True)}


@c.impl("jax", backend="jax", dtypes=("float32",))
def _(image):
    import jax

    return {"y": jax.image.resize(image, (*image.shape[:2], *SIZE), method="linear", antialias=True)}


@c.impl("torch-default", backend="torch", dtypes=("float32",))
def _(image):
    import torch.nn.functional as F

    return {"y": F.interpolate(image, size=SIZE, mode="bilinear", align_corners=False)}


c.known_divergence(
    "torch's interpolate defaults to antialias=False, PIL antialiases: ResNet-18 top-1 68.934 vs 69.752 "
    "(shift-happens-benchmark/icml-2022#62)",
    variants="*[torch-default:*",
    checks=("backend",),  # against the reference; elsewhere it matches itself
)
