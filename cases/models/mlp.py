"""A two-layer MLP (64 -> 128 -> 10, ReLU): the torch module is the source, exported to ONNX and
run in ONNX Runtime (mode ``onnx``), and ported to JAX with the same weights.

Matmul outputs are sums that cancel near zero, where ULP and relative error explode; they are
judged by the error relative to the output's largest magnitude (``scaled``): a 256 x 512 @
512 x 512 float32 matmul, measured on an x86 CPU with numpy 2.4 and jax 0.10, is up to 1.7 million
ULP apart near zero, yet within 8.7e-7 (jax) and 4.8e-7 (numpy) of the output's largest magnitude
against a float64 product.
"""

import numpy as np

from detharness import case


def _params(rng):
    return {
        "w1": (rng.standard_normal((128, 64)) / 8).astype("float32"),
        "b1": (0.1 * rng.standard_normal(128)).astype("float32"),
        "w2": (rng.standard_normal((10, 128)) / 11).astype("float32"),
        "b2": (0.1 * rng.standard_normal(10)).astype("float32"),
    }


c = case(
    "models/mlp",
    tags={"model"},
    description="Linear(64, 128) -> ReLU -> Linear(128, 10) on a batch of 256",
    inputs=lambda rng: {"x": rng.standard_normal((256, 64)).astype("float32")},
    params=_params,
    # Worst scaled error here x3, rounded up for other CPUs' kernels: f32 2.7e-7, f16 6.4e-4, bf16 5.7e-3
    tolerance={"float32": "scaled(9e-7)", "float16": "scaled(2e-3)", "bfloat16": "scaled(2e-2)"},
    decisions={"y": "argmax @ 2%"},  # measured: bfloat16 flips 2 of 256 rows (near ties)
)


# The reference's float32 variant is the accuracy's baseline: the same formula at float32.
@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64", "float32"))
def _(x, params):
    h = np.maximum(x @ params["w1"].T + params["b1"], 0)
    return {"y": h @ params["w2"].T + params["b2"]}


@c.impl("torch", backend="torch", module=True, dtypes=("float32", "float16", "bfloat16"), modes=("eager", "onnx"))
def _(params):
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    with torch.no_grad():
        model[0].weight.copy_(params["w1"])
        model[0].bias.copy_(params["b1"])
        model[2].weight.copy_(params["w2"])
        model[2].bias.copy_(params["b2"])
    return model


@c.impl("jax", backend="jax", module=True, dtypes=("float32", "float16", "bfloat16"))
def _(params):
    import jax.numpy as jnp

    def mlp(x):
        h = jnp.maximum(x @ params["w1"].T + params["b1"], 0)
        return h @ params["w2"].T + params["b2"]

    return mlp
