"""numpy: the reference backend, CPU only, plain functions in one mode."""

from __future__ import annotations

from typing import Any

import numpy as np

from detharness.backends.base import Backend
from detharness.dtypes import ALL_DTYPES


class NumpyBackend(Backend):
    """Runs plain functions on numpy arrays; inputs are handed over without a copy.

    numpy is a dependency of detharness itself, so this backend is always installed.
    """

    name = "numpy"
    import_name = "numpy"
    distributions = ("numpy",)
    install_hint = "pip install numpy"
    modes = ("eager",)
    default_modes = ("eager",)
    # Text preprocessing takes string arrays; numpy is the one backend that holds them as they are.
    dtypes = (*ALL_DTYPES, "str")

    def _to_native(self, array: np.ndarray, device: str) -> Any:
        # A read-only view copies nothing, yet an implementation that writes into its input
        # (x -= x.mean()) fails loudly instead of changing the arrays the runner hands the next
        # variant or repeat, which would show up as a false divergence.
        view = array.view()
        view.flags.writeable = False
        return view

    def _seed(self, seed: int) -> None:
        # Only numpy's legacy global stream can be seeded; a case that draws from a Generator
        # gets it from its rng argument.
        np.random.seed(seed % 2**32)

    def _fingerprint(self) -> dict[str, Any]:
        import ml_dtypes

        return {"numpy.version": np.__version__, "ml_dtypes.version": ml_dtypes.__version__}
