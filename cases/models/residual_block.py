"""A ResNet basic block: conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the input, then ReLU.

The ONNX export folds each eval-mode batch norm into its conv's weights (the served graph has
other weights than the trained module: Conv, Relu, Add), and ONNX Runtime fuses further at its
higher optimization levels (onnxruntime#14500); torch runs oneDNN convs, jax XLA's. The skip
connection adds the input back after two sums that cancel near zero, so outputs are judged
against their scale (onnxruntime#18946: max relative 0.667 at a max abs of 4.8e-7).
"""

import numpy as np

from detharness import case

CHANNELS, EPS = 8, 1e-5


def _params(rng):
    p = {}
    for i in (1, 2):
        fan_in = 9 * CHANNELS
        p[f"conv{i}.weight"] = (rng.standard_normal((CHANNELS, CHANNELS, 3, 3)) / np.sqrt(fan_in)).astype("float32")
        p[f"bn{i}.weight"] = (1 + 0.1 * rng.standard_normal(CHANNELS)).astype("float32")
        p[f"bn{i}.bias"] = (0.1 * rng.standard_normal(CHANNELS)).astype("float32")
        p[f"bn{i}.running_mean"] = (0.1 * rng.standard_normal(CHANNELS)).astype("float32")
        p[f"bn{i}.running_var"] = rng.uniform(0.5, 1.5, CHANNELS).astype("float32")
    return p


c = case(
    "models/residual_block",
    tags={"model"},
    description="ResNet basic block, 8 channels, convs without bias, on 2 x 8 x 16 x 16",
    inputs=lambda rng: {"x": rng.standard_normal((2, CHANNELS, 16, 16)).astype("float32")},
    params=_params,
    # Worst scaled error here x3, rounded up for other CPUs' kernels: f32 2.1e-7, f16 8.9e-4, bf16 1.0e-2
    tolerance={"float32": "scaled(7e-7)", "float16": "scaled(3e-3)", "bfloat16": "scaled(4e-2)"},
)


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
def _(x, params):
    def conv(t, name):
        h, w = t.shape[2:]
        padded = np.pad(t, ((0, 0), (0, 0), (1, 1), (1, 1)))
        patches = np.stack([padded[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=2)
        return np.einsum("nckhw,ock->nohw", patches, params[f"{name}.weight"].reshape(CHANNELS, CHANNELS, 9))

    def bn(t, name):
        def per_channel(key):
            return params[f"{name}.{key}"][None, :, None, None]

        return (t - per_channel("running_mean")) / np.sqrt(per_channel("running_var") + EPS) * per_channel("weight") \
            + per_channel("bias")

    h = np.maximum(bn(conv(x, "conv1"), "bn1"), 0)
    return {"y": np.maximum(bn(conv(h, "conv2"), "bn2") + x, 0)}


@c.impl("torch", backend="torch", module=True, dtypes=("float32", "float16", "bfloat16"), modes=("eager", "onnx"))
def _(params):
    import torch

    class BasicBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, bias=False)
            self.bn1 = torch.nn.BatchNorm2d(CHANNELS, eps=EPS)
            self.conv2 = torch.nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, bias=False)
            self.bn2 = torch.nn.BatchNorm2d(CHANNELS, eps=EPS)

        def forward(self, x):
            h = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(h)) + x)

    block = BasicBlock()
    # strict=False only for the batch norms' num_batches_tracked counters, which eval mode never reads.
    missing, unexpected = block.load_state_dict(params, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    return block.eval()


@c.impl("jax", backend="jax", module=True, dtypes=("float32", "float16", "bfloat16"))
def _(params):
    import jax
    import jax.numpy as jnp

    def conv(t, name):
        return jax.lax.conv_general_dilated(t, params[f"{name}.weight"], window_strides=(1, 1),
                                            padding=((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))

    def bn(t, name):
        def per_channel(key):
            return params[f"{name}.{key}"][None, :, None, None]

        return (t - per_channel("running_mean")) / jnp.sqrt(per_channel("running_var") + EPS) * per_channel("weight") \
            + per_channel("bias")

    def basic_block(x):
        h = jnp.maximum(bn(conv(x, "conv1"), "bn1"), 0)
        return jnp.maximum(bn(conv(h, "conv2"), "bn2") + x, 0)

    return basic_block
