"""Causal scaled dot-product attention: ``softmax(q k^T / sqrt(d) + causal mask) v``, head size 64.

torch's CPU kernel is a flash-attention loop with an online softmax; the ONNX export spells it out
as MatMul, an additive mask and Softmax, scaling q and k each by d^-1/4 (0.354, rounded twice)
instead of the scores by d^-1/2 (0.125, exact); jax.nn.dot_product_attention goes through XLA.
Each output is a weighted sum of values that cancels near zero, so it is judged against the
output's scale: a 256 x 512 @ 512 x 512 float32 matmul, measured on an x86 CPU with numpy 2.4
and jax 0.10, is up to 1.7 million ULP apart near zero, yet within 8.7e-7 (jax) and 4.8e-7 (numpy)
of the output's largest magnitude against a float64 product.
"""

import numpy as np

from detharness import case

BATCH, HEADS, SEQ, HEAD_DIM = 2, 4, 32, 64


def _inputs(rng):
    shape = (BATCH, HEADS, SEQ, HEAD_DIM)
    return {name: rng.standard_normal(shape).astype("float32") for name in ("q", "k", "v")}


c = case(
    "models/attention",
    tags={"model"},
    description="causal scaled_dot_product_attention, batch 2, 4 heads, 32 positions, head size 64",
    inputs=_inputs,
    # Worst scaled error here x3, rounded up for other CPUs' kernels: f32 3.5e-7, f16 6.3e-4, bf16 3.9e-3
    tolerance={"float32": "scaled(2e-6)", "float16": "scaled(2e-3)", "bfloat16": "scaled(2e-2)"},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
def _(q, k, v):
    scores = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])
    scores = np.where(np.tril(np.ones((SEQ, SEQ), dtype=bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return {"y": (weights / weights.sum(-1, keepdims=True)) @ v}


@c.impl("torch", backend="torch", module=True, dtypes=("float32", "float16", "bfloat16"), modes=("eager", "onnx"))
def _(params):
    import torch

    class CausalAttention(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    return CausalAttention()


# No float16: jax.nn.dot_product_attention asks XLA's CPU dot for float16 inputs with float32
# accumulation (F16_F16_F32), which it refuses (jax 0.10), so the variant could only error here.
@c.impl("jax", backend="jax", dtypes=("float32", "bfloat16"))
def _(q, k, v):
    import jax

    # jax takes (batch, positions, heads, head size); torch's layout is (batch, heads, positions, head size).
    def to_btnh(t):
        return t.transpose(0, 2, 1, 3)

    return {"y": to_btnh(jax.nn.dot_product_attention(to_btnh(q), to_btnh(k), to_btnh(v), is_causal=True))}
