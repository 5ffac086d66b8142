"""One post-norm transformer encoder layer (torch.nn.TransformerEncoderLayer, eval, batch_first,
GELU), ported to jax and to a float64 numpy reference with the same weights.

In eval mode under inference_mode torch takes its "fast path" (``_transformer_encoder_layer_fwd``,
one native kernel for the layer), while the ONNX export spells the layer out (MatMul, Softmax,
LayerNormalization, Gelu): the served graph is not the code that was validated. Attention and the
feed-forward block are sums that cancel near zero, so outputs are judged against their scale:
a 256 x 512 @ 512 x 512 float32 matmul, measured on an x86 CPU with numpy 2.4 and jax 0.10,
is up to 1.7 million ULP apart near zero, yet within 8.7e-7 (jax) and 4.8e-7 (numpy) of the
output's largest magnitude against a float64 product. The port must use the erf GELU: jax.nn.gelu
defaults to the tanh form (apache/tvm#18750; see models/gelu).
"""

import math

import numpy as np

from detharness import case

D_MODEL, HEADS, D_FF, EPS = 32, 4, 64, 1e-5
BATCH, SEQ = 2, 16


def _params(rng):
    # Named as in the module's state_dict, so the torch builder loads them in one call.
    def linear(out_features, in_features):
        scale = 1 / math.sqrt(in_features)
        return ((rng.standard_normal((out_features, in_features)) * scale).astype("float32"),
                (0.1 * rng.standard_normal(out_features)).astype("float32"))

    p = {}
    p["self_attn.in_proj_weight"], p["self_attn.in_proj_bias"] = linear(3 * D_MODEL, D_MODEL)
    p["self_attn.out_proj.weight"], p["self_attn.out_proj.bias"] = linear(D_MODEL, D_MODEL)
    p["linear1.weight"], p["linear1.bias"] = linear(D_FF, D_MODEL)
    p["linear2.weight"], p["linear2.bias"] = linear(D_MODEL, D_FF)
    for norm in ("norm1", "norm2"):
        p[f"{norm}.weight"] = (1 + 0.1 * rng.standard_normal(D_MODEL)).astype("float32")
        p[f"{norm}.bias"] = (0.1 * rng.standard_normal(D_MODEL)).astype("float32")
    return p


c = case(
    "models/transformer_encoder",
    tags={"model"},
    description="TransformerEncoderLayer(d_model 32, 4 heads, feed-forward 64, GELU) on 2 x 16 x 32",
    inputs=lambda rng: {"x": rng.standard_normal((BATCH, SEQ, D_MODEL)).astype("float32")},
    params=_params,
    # Worst scaled error here x3, rounded up for other CPUs' kernels: f32 2.6e-7, f16 1.1e-3, bf16 1.0e-2
    tolerance={"float32": "scaled(8e-7)", "float16": "scaled(4e-3)", "bfloat16": "scaled(4e-2)"},
)

_erf = np.vectorize(math.erf, otypes=[np.float64])


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
def _(x, params):
    def linear(t, name):
        return t @ params[f"{name}.weight"].T + params[f"{name}.bias"]

    def layer_norm(t, name):
        mean, var = t.mean(-1, keepdims=True), t.var(-1, keepdims=True)
        return (t - mean) / np.sqrt(var + EPS) * params[f"{name}.weight"] + params[f"{name}.bias"]

    def heads(t):  # (batch, seq, d_model) -> (batch, heads, seq, head size)
        return t.reshape(BATCH, SEQ, HEADS, D_MODEL // HEADS).transpose(0, 2, 1, 3)

    qkv = x @ params["self_attn.in_proj_weight"].T + params["self_attn.in_proj_bias"]
    q, k, v = (heads(t) for t in np.split(qkv, 3, axis=-1))
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(D_MODEL // HEADS)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    attended = ((weights / weights.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(BATCH, SEQ, D_MODEL)
    h = layer_norm(x + linear(attended, "self_attn.out_proj"), "norm1")
    hidden = linear(h, "linear1")
    hidden = hidden * 0.5 * (1.0 + _erf(hidden / math.sqrt(2.0)))
    return {"y": layer_norm(h + linear(hidden, "linear2"), "norm2")}


@c.impl("torch", backend="torch", module=True, dtypes=("float32", "float16", "bfloat16"), modes=("eager", "onnx"))
def _(params):
    import torch

    layer = torch.nn.TransformerEncoderLayer(D_MODEL, HEADS, dim_feedforward=D_FF, dropout=0.0, activation="gelu",
                                             layer_norm_eps=EPS, batch_first=True)
    layer.load_state_dict(params)
    return layer.eval()


# No float16: jax.nn.dot_product_attention asks XLA's CPU dot for float16 inputs with float32
# accumulation (F16_F16_F32), which it refuses (jax 0.10), so the variant could only error here.
@c.impl("jax", backend="jax", module=True, dtypes=("float32", "bfloat16"))
def _(params):
    import jax
    import jax.numpy as jnp

    def linear(t, name):
        return t @ params[f"{name}.weight"].T + params[f"{name}.bias"]

    def layer_norm(t, name):
        mean, var = jnp.mean(t, -1, keepdims=True), jnp.var(t, -1, keepdims=True)
        return (t - mean) / jnp.sqrt(var + EPS) * params[f"{name}.weight"] + params[f"{name}.bias"]

    def heads(t):  # jax.nn.dot_product_attention takes (batch, seq, heads, head size)
        return t.reshape(t.shape[0], t.shape[1], HEADS, D_MODEL // HEADS)

    def encoder_layer(x):
        qkv = x @ params["self_attn.in_proj_weight"].T + params["self_attn.in_proj_bias"]
        q, k, v = jnp.split(qkv, 3, axis=-1)
        attended = jax.nn.dot_product_attention(heads(q), heads(k), heads(v)).reshape(x.shape)
        h = layer_norm(x + linear(attended, "self_attn.out_proj"), "norm1")
        hidden = jax.nn.gelu(linear(h, "linear1"), approximate=False)
        return layer_norm(h + linear(hidden, "linear2"), "norm2")

    return encoder_layer
