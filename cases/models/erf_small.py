"""erf over tiny inputs, |x| between 1e-9 and 1e-5, where ``erf(x) = 2x/sqrt(pi)`` to float32.

Each backend's erf is a polynomial or rational kernel of its own, vectorized per ISA; near zero a
kernel tuned for absolute accuracy can lose relative accuracy. Here (x86-64; torch 2.13,
jax 0.10.2, onnxruntime 1.32) every implementation is within 1 ULP of float64 ``math.erf``: torch
eager on 5.9% of the elements (the same bits under every ATEN_CPU_CAPABILITY), its ONNX export (one
``Erf`` node in ONNX Runtime) on 17%, jax on 65%. PyPI's aarch64 torch 2.13, run emulated as a
Neoverse-N1, has up to 10% relative error below 1e-5, about a million ULP, where x86 torch stays
within 1 ULP; models/gelu cannot show it, its few inputs near zero are judged against the output's
scale.

Inputs are normal floats and a few exact zeros (erf(+-0) = +-0). No subnormals: jax (XLA on the
CPU) flushes them to zero, erf(1e-40) = 0 where the answer is 1.1e-40.
"""

import math

import numpy as np

from detharness import case


def _inputs(rng):
    magnitude = 10.0 ** rng.uniform(-9, -5, size=(64, 1024))
    x = (rng.choice([-1.0, 1.0], size=(64, 1024)) * magnitude).astype("float32")
    x[0, :8] = 0.0
    x[0, 8:16] = -0.0
    return {"x": x}


c = case(
    "models/erf_small",
    tags={"model", "arm"},
    description="erf over 64 x 1024 values of magnitude 1e-9 to 1e-5, both signs",
    inputs=_inputs,
    # Worst here 1 ULP (torch eager and onnx, jax), x3; a 10% relative error is about 1e6 ULP.
    tolerance={"float32": "ulp(3)"},
)

_erf = np.vectorize(math.erf, otypes=[np.float64])


@c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
def _(x):
    return {"y": _erf(x)}


@c.impl("torch", backend="torch", module=True, dtypes=("float32",), modes=("eager", "onnx"))
def _(params):
    import torch

    class Erf(torch.nn.Module):
        def forward(self, x):
            return torch.erf(x)

    return Erf()


@c.impl("jax", backend="jax", dtypes=("float32",))
def _(x):
    import jax

    return {"y": jax.scipy.special.erf(x)}
