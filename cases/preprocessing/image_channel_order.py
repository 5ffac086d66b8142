"""Channel order: HWC RGB images (PIL, torchvision's decoders) to the CHW BGR layout of a model
trained on OpenCV-decoded images (Caffe-era weights, many detection models).

A pure permutation: every byte is copied, compared bit for bit. OpenCV's ``imread`` decodes to
BGR, PIL to RGB; a service that decodes with the other library and skips the swap feeds the model
red and blue exchanged, which nothing flags. That is the ``no-swap`` implementation, declared a
known divergence.
"""

import numpy as np

from detharness import case

c = case(
    "preprocessing/image_channel_order",
    tags={"preprocessing"},
    description="4 x 32 x 32 x 3 uint8 RGB (HWC) to 4 x 3 x 32 x 32 BGR (CHW)",
    inputs=lambda rng: {"rgb": rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("uint8",))
def _(rgb):
    return {"bgr": np.ascontiguousarray(rgb[..., ::-1].transpose(0, 3, 1, 2))}


@c.impl("torch", backend="torch", dtypes=("uint8",))
def _(rgb):
    return {"bgr": rgb.flip(-1).permute(0, 3, 1, 2).contiguous()}


@c.impl("jax", backend="jax", dtypes=("uint8",))
def _(rgb):
    import jax.numpy as jnp

    return {"bgr": jnp.transpose(rgb[..., ::-1], (0, 3, 1, 2))}


@c.impl("no-swap", backend="numpy", dtypes=("uint8",))
def _(rgb):
    return {"bgr": np.ascontiguousarray(rgb.transpose(0, 3, 1, 2))}


c.known_divergence(
    "OpenCV decodes to BGR, PIL to RGB: without the swap the model sees red and blue exchanged",
    variants="*[no-swap:*",
    checks=("backend",),  # against the reference; elsewhere it matches itself
)
