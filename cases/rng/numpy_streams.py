"""numpy's seeded streams: the Generator over PCG64, Philox, SFC64 and MT19937, and the legacy RandomState.

NEP 19 promises a bit generator's raw bits for a seed across numpy versions, but not the values a
Generator's distributions make of them (a faster normal or integers algorithm may land in any
release; numpy 2 already changed how a few methods draw), while RandomState's stream is frozen.
Each output is drawn from a fresh generator seeded with the case's seed, so a change in one method
shows as that output's stream parting from the baseline's at its first index, not as every later
output shifting. Here, seed 0: PCG64 standard_normal starts [0.126, -0.132, 0.640], RandomState
[1.764, 0.400, 0.979].
"""

import numpy as np

from detharness import case

N = 4096

c = case(
    "rng/numpy",
    kind="rng",
    seed=0,
    description="raw bits, uniform, normal (float64 and float32), integers and a permutation from each numpy generator",
)


def _generator_streams(make):
    """The same draws from fresh Generators: ``make()`` returns one seeded with the case's seed."""
    return {
        "bits": make().bit_generator.random_raw(N),
        "uniform": make().random(N),
        "normal": make().standard_normal(N),
        "normal_float32": make().standard_normal(N, dtype=np.float32),
        "exponential": make().standard_exponential(N),
        "integers": make().integers(0, 1000, N),
        "permutation": make().permutation(1000),
    }


def _generator(bit_generator):
    return lambda: _generator_streams(lambda: np.random.Generator(bit_generator(c.seed)))


for _name, _bits in (("pcg64", np.random.PCG64), ("philox", np.random.Philox), ("sfc64", np.random.SFC64),
                     ("mt19937", np.random.MT19937)):
    c.impl(_name, backend="numpy", dtypes=("float64",))(_generator(_bits))


@c.impl("random_state", backend="numpy", dtypes=("float64",))
def _():
    make = lambda: np.random.RandomState(c.seed)  # noqa: E731
    return {
        "bits": make().randint(0, 2**32, N, dtype=np.uint64),
        "uniform": make().random_sample(N),
        "normal": make().standard_normal(N),
        "exponential": make().standard_exponential(N),
        "integers": make().randint(0, 1000, N),
        "permutation": make().permutation(1000),
    }
