"""A one-layer GRU (batch_first), from a zero state: torch module, ONNX export, a jax port with
``lax.scan`` and a float64 numpy loop, all with the same weights.

The GRU's candidate state applies the reset gate to the *projected* hidden state,
``tanh(W_in x + b_in + r * (W_hn h + b_hn))`` (torch's form, exported as ONNX's GRU op with
``linear_before_reset=1``);
ports that apply it before the projection, as the original paper does, compute another function.
Gate sums cancel and rounding compounds over the 24 steps, so outputs are judged against their
scale: a 256 x 512 @ 512 x 512 float32 matmul, measured on an x86 CPU with numpy 2.4 and jax
0.10, is up to 1.7 million ULP apart near zero, yet within 8.7e-7 (jax) and 4.8e-7 (numpy) of the
output's largest magnitude against a float64 product.
"""

import math

import numpy as np

from detharness import case

INPUT, HIDDEN = 16, 32
BATCH, SEQ = 4, 24


def _params(rng):
    # torch's names and gate order (reset, update, new), with its uniform init range.
    bound = 1 / math.sqrt(HIDDEN)

    def uniform(*shape):
        return rng.uniform(-bound, bound, shape).astype("float32")

    return {"weight_ih_l0": uniform(3 * HIDDEN, INPUT), "weight_hh_l0": uniform(3 * HIDDEN, HIDDEN),
            "bias_ih_l0": uniform(3 * HIDDEN), "bias_hh_l0": uniform(3 * HIDDEN)}


c = case(
    "models/gru",
    tags={"model"},
    description="GRU(16 -> 32), batch_first, over 4 sequences of 24 steps; outputs y and h",
    inputs=lambda rng: {"x": rng.standard_normal((BATCH, SEQ, INPUT)).astype("float32")},
    params=_params,
    # Worst scaled error here x3, rounded up for other CPUs' kernels: f32 1.7e-7, f16 1.0e-3, bf16 9.7e-3
    tolerance={"float32": "scaled(5e-7)", "float16": "scaled(4e-3)", "bfloat16": "scaled(3e-2)"},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
def _(x, params):
    def sigmoid(t):
        return 1 / (1 + np.exp(-t))

    h = np.zeros((BATCH, HIDDEN))
    ys = []
    for t in range(SEQ):
        xr, xz, xn = np.split(x[:, t] @ params["weight_ih_l0"].T + params["bias_ih_l0"], 3, axis=-1)
        hr, hz, hn = np.split(h @ params["weight_hh_l0"].T + params["bias_hh_l0"], 3, axis=-1)
        r, z = sigmoid(xr + hr), sigmoid(xz + hz)
        h = (1 - z) * np.tanh(xn + r * hn) + z * h
        ys.append(h)
    return {"y": np.stack(ys, axis=1), "h": h[None]}


@c.impl("torch", backend="torch", module=True, dtypes=("float32", "float16", "bfloat16"), modes=("eager", "onnx"))
def _(params):
    import torch

    class GRU(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.GRU(INPUT, HIDDEN, batch_first=True)

        def forward(self, x):
            y, h = self.rnn(x)
            return {"y": y, "h": h}

    model = GRU()
    model.rnn.load_state_dict(params)
    return model


@c.impl("jax", backend="jax", module=True, dtypes=("float32", "float16", "bfloat16"))
def _(params):
    import jax
    import jax.numpy as jnp

    def step(h, x_t):
        xr, xz, xn = jnp.split(x_t @ params["weight_ih_l0"].T + params["bias_ih_l0"], 3, axis=-1)
        hr, hz, hn = jnp.split(h @ params["weight_hh_l0"].T + params["bias_hh_l0"], 3, axis=-1)
        r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
        h = (1 - z) * jnp.tanh(xn + r * hn) + z * h
        return h, h

    def gru(x):
        h, ys = jax.lax.scan(step, jnp.zeros((x.shape[0], HIDDEN), x.dtype), x.swapaxes(0, 1))
        return {"y": ys.swapaxes(0, 1), "h": h[None]}

    return gru
