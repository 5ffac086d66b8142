"""A one-layer LSTM (batch_first), from a zero state: torch module, ONNX export, a jax port with
``lax.scan`` and a float64 numpy loop, all with the same weights.

torch on the CPU runs the sequence in oneDNN's RNN kernel (``mkldnn_rnn_layer``); the ONNX export
is one LSTM op, run by ONNX Runtime's own kernel; jax scans the cell. Gate pre-activations are sums that cancel, and
rounding compounds over the 24 steps through the cell state, so outputs are judged against their
scale rather than in ULP: a 256 x 512 @ 512 x 512 float32 matmul, measured on an x86 CPU with
numpy 2.4 and jax 0.10, is up to 1.7 million ULP apart near zero, yet within 8.7e-7 (jax) and
4.8e-7 (numpy) of the output's largest magnitude against a float64 product.
"""

import math

import numpy as np

from detharness import case

INPUT, HIDDEN = 16, 32
BATCH, SEQ = 4, 24


def _params(rng):
    # torch's names and gate order (input, forget, cell, output), with its uniform init range.
    bound = 1 / math.sqrt(HIDDEN)

    def uniform(*shape):
        return rng.uniform(-bound, bound, shape).astype("float32")

    return {"weight_ih_l0": uniform(4 * HIDDEN, INPUT), "weight_hh_l0": uniform(4 * HIDDEN, HIDDEN),
            "bias_ih_l0": uniform(4 * HIDDEN), "bias_hh_l0": uniform(4 * HIDDEN)}


c = case(
    "models/lstm",
    tags={"model"},
    description="LSTM(16 -> 32), batch_first, over 4 sequences of 24 steps; outputs y, h, c",
    inputs=lambda rng: {"x": rng.standard_normal((BATCH, SEQ, INPUT)).astype("float32")},
    params=_params,
    # Worst scaled error here x3, rounded up for other CPUs' kernels: f32 2.0e-7, f16 1.2e-3, bf16 1.1e-2
    tolerance={"float32": "scaled(6e-7)", "float16": "scaled(4e-3)", "bfloat16": "scaled(4e-2)"},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
def _(x, params):
    def sigmoid(t):
        return 1 / (1 + np.exp(-t))

    h = np.zeros((BATCH, HIDDEN))
    cell = np.zeros((BATCH, HIDDEN))
    ys = []
    for t in range(SEQ):
        gates = (x[:, t] @ params["weight_ih_l0"].T + params["bias_ih_l0"]
                 + h @ params["weight_hh_l0"].T + params["bias_hh_l0"])
        i, f, g, o = np.split(gates, 4, axis=-1)
        cell = sigmoid(f) * cell + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(cell)
        ys.append(h)
    return {"y": np.stack(ys, axis=1), "h": h[None], "c": cell[None]}


@c.impl("torch", backend="torch", module=True, dtypes=("float32", "float16", "bfloat16"), modes=("eager", "onnx"))
def _(params):
    import torch

    class LSTM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(INPUT, HIDDEN, batch_first=True)

        def forward(self, x):
            y, (h, cell) = self.rnn(x)
            return {"y": y, "h": h, "c": cell}

    model = LSTM()
    model.rnn.load_state_dict(params)
    return model


@c.impl("jax", backend="jax", module=True, dtypes=("float32", "float16", "bfloat16"))
def _(params):
    import jax
    import jax.numpy as jnp

    def step(carry, x_t):
        h, cell = carry
        gates = (x_t @ params["weight_ih_l0"].T + params["bias_ih_l0"]
                 + h @ params["weight_hh_l0"].T + params["bias_hh_l0"])
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        cell = jax.nn.sigmoid(f) * cell + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(cell)
        return (h, cell), h

    def lstm(x):
        zeros = jnp.zeros((x.shape[0], HIDDEN), x.dtype)
        (h, cell), ys = jax.lax.scan(step, (zeros, zeros), x.swapaxes(0, 1))
        return {"y": ys.swapaxes(0, 1), "h": h[None], "c": cell[None]}

    return lstm
