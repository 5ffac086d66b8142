"""uint8 HWC images to float CHW, normalized with ImageNet's mean and std (torchvision's
``ToTensor`` then ``Normalize``).

The training pipeline divides by 255, subtracts the mean and divides by the std; exported serving
graphs (ONNX, TensorRT, DALI) often fold the constants into one multiply-add,
``x * (1 / (255 std)) - mean / std``, which rounds differently. Outputs cross zero where a pixel
equals the channel mean: judged against the output's scale.
"""

import numpy as np

from detharness import case

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _channels(values, dtype):
    return np.array(values, dtype=dtype)[:, None, None]


c = case(
    "preprocessing/image_normalize_uint8",
    tags={"preprocessing"},
    description="4 x 64 x 64 x 3 uint8 images to 4 x 3 x 64 x 64 float, (x / 255 - mean) / std",
    inputs=lambda rng: {"image": rng.integers(0, 256, size=(4, 64, 64, 3), dtype=np.uint8)},
    # Three float32 roundings of values up to the output's scale (2.6): under 4 eps = 5e-7 of it
    # (numpy and torch 1.4e-7, jax 2.0e-7 as XLA multiplies by reciprocals, folded 1.3e-7 here).
    tolerance={"float32": "scaled(5e-7)"},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
def _(image):
    x = image.transpose(0, 3, 1, 2) / 255.0
    return {"y": (x - _channels(MEAN, np.float64)) / _channels(STD, np.float64)}


@c.impl("numpy32", backend="numpy", dtypes=("float32",))
def _(image):
    x = image.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    return {"y": (x - _channels(MEAN, np.float32)) / _channels(STD, np.float32)}


@c.impl("torch", backend="torch", dtypes=("float32",))
def _(image):
    import torch

    x = image.permute(0, 3, 1, 2).float().div(255)
    mean, std = (torch.tensor(v, device=x.device)[:, None, None] for v in (MEAN, STD))
    return {"y": (x - mean) / std}


@c.impl("jax", backend="jax", dtypes=("float32",))
def _(image):
    import jax.numpy as jnp

    x = jnp.transpose(image, (0, 3, 1, 2)).astype(jnp.float32) / 255
    return {"y": (x - _channels(MEAN, np.float32)) / _channels(STD, np.float32)}


@c.impl("folded", backend="numpy", dtypes=("float32",))
def _(image):
    scale = _channels([1 / (255 * s) for s in STD], np.float32)
    shift = _channels([m / s for m, s in zip(MEAN, STD, strict=True)], np.float32)
    return {"y": image.transpose(0, 3, 1, 2).astype(np.float32) * scale - shift}
