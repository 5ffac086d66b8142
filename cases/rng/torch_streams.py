"""torch's seeded streams: an explicit ``torch.Generator``, the global generator (dropout masks),
and the ``nn.init`` initializers that make a model's first weights.

The implementations draw on the variant's device and in its dtype, which they read from ``ctx``
(the variant's context), so one body serves every variant. On CUDA the same seed gives
other numbers than on the CPU: the CPU generator is an mt19937, the CUDA one a Philox whose output
also depends on how the kernel is launched (pytorch#79496; for long tensors on the GPU's SM count,
pytorch#143086). That is by design, and declared known; a CUDA stream that changes between two
runners is not. ``orthogonal_`` runs a QR factorization on its draws: it moves with LAPACK too.
Here, seed 0: ``torch.randn(3)`` = [1.5410, -0.2934, -2.1788], but ``torch.randn(4096)`` starts
[-1.1258, -1.1524, -0.2506]: from 16 values on, the CPU kernel takes a vectorized path that pairs
its uniform draws differently, so both lengths are streams of their own here.
"""

from detharness import case

N = 4096
SEED = 0

c = case(
    "rng/torch",
    kind="rng",
    seed=SEED,
    description="randn, rand, randint, randperm, bernoulli, dropout masks and nn.init draws from seed 0",
)
c.known_divergence(
    "torch's CUDA generator (Philox) draws other numbers than its CPU generator (mt19937) from one seed, "
    "by design (pytorch#79496)",
    variants="*[*:cuda:*", against="*[*:cpu:*", checks=("rng",),
)


@c.impl("generator", backend="torch", dtypes=("float32", "float64", "bfloat16"))
def _(ctx):
    import torch

    device, dtype = ctx.device, getattr(torch, ctx.dtype)

    def make():
        return torch.Generator(device=device).manual_seed(SEED)

    return {
        "randn": torch.randn(N, generator=make(), device=device, dtype=dtype),
        "randn_short": torch.randn(15, generator=make(), device=device, dtype=dtype),
        "rand": torch.rand(N, generator=make(), device=device, dtype=dtype),
        "normal_": torch.empty(N, device=device, dtype=dtype).normal_(2.0, 3.0, generator=make()),
        "randint": torch.randint(0, 1000, (N,), generator=make(), device=device),
        "randperm": torch.randperm(1000, generator=make(), device=device),
        "bernoulli": torch.bernoulli(torch.full((N,), 0.3, device=device, dtype=dtype), generator=make()),
    }


@c.impl("global", backend="torch", dtypes=("float32",))
def _(ctx):
    import torch

    device, dtype = ctx.device, getattr(torch, ctx.dtype)

    # The global generators, seeded with the case's seed before each call (torch.manual_seed
    # seeds the CPU's and every GPU's): what dropout and most training code draw from.
    # One stream, drawn in order: randn's values first, then the dropout mask from where it left off.
    randn = torch.randn(N, device=device, dtype=dtype)
    ones = torch.ones(256, 64, device=device, dtype=dtype)
    mask = torch.nn.functional.dropout(ones, p=0.5, training=True) != 0
    return {"randn": randn, "dropout_mask": mask}


@c.impl("init", backend="torch", dtypes=("float32",))
def _(ctx):
    import torch

    device, dtype = ctx.device, getattr(torch, ctx.dtype)

    def weight(init, **kwargs):
        w = torch.empty(64, 32, device=device, dtype=dtype)
        init(w, generator=torch.Generator(device=device).manual_seed(SEED), **kwargs)
        return w

    init = torch.nn.init
    return {
        "kaiming_uniform_": weight(init.kaiming_uniform_, a=5 ** 0.5),  # nn.Linear's default weights
        "kaiming_normal_": weight(init.kaiming_normal_),
        "xavier_uniform_": weight(init.xavier_uniform_),
        "xavier_normal_": weight(init.xavier_normal_),
        "trunc_normal_": weight(init.trunc_normal_, std=0.02),
        "orthogonal_": weight(init.orthogonal_),
    }
