"""Round trips of fitted preprocessing objects: a scaler and a category encoder, saved and rebuilt.

Training fits them; serving rebuilds them from a file. Here they are saved as JSON and as
safetensors (never pickle: a pickled scaler is code, and a version bump breaks it), rebuilt with
``from_state``, and must transform the serving data bit for bit as before. JSON is the classic
trap: writing a float with ``%.6g`` or ``round()`` loses bits and moves every standardized value;
Python's ``json`` writes the shortest text that reads back to the same double, which keeps them.
The encoder's vocabulary is strings, which safetensors cannot hold as tensors: they travel in its
metadata. Its vocabulary is sorted when fitted: built from a ``set`` its order (and so every code)
would change with each process's hash seed (PYTHONHASHSEED).
"""

import numpy as np

from detharness import case
from detharness.roundtrip import roundtrip_modes

MODES = roundtrip_modes("numpy", ["json", "safetensors"])


class StandardScaler:
    """z-score per column, fitted on training rows; ``std`` 0 columns are left unscaled."""

    def __init__(self, mean, scale):
        self.mean = mean
        self.scale = scale

    @classmethod
    def fit(cls, rows):
        std = rows.std(axis=0)
        return cls(rows.mean(axis=0), np.where(std == 0, np.ones_like(std), std))

    def __call__(self, x):
        return {"y": (x - self.mean) / self.scale}

    def get_state(self):
        return {"mean": self.mean, "scale": self.scale}

    @classmethod
    def from_state(cls, state):
        return cls(state["mean"], state["scale"])


scaler = case(
    "roundtrip/standard_scaler",
    tags={"roundtrip", "preprocessing"},
    description="a scaler fitted on 2048 training rows, saved, rebuilt and applied to 512 serving rows",
    params=lambda rng: {"train": (rng.standard_normal((2048, 16)) * rng.uniform(0.1, 50, 16) + rng.uniform(-9, 9, 16))},
    inputs=lambda rng: {"x": rng.standard_normal((512, 16)) * 20},
)


@scaler.impl("numpy", backend="numpy", module=True, dtypes=("float64", "float32"), modes=MODES)
def _(params):
    return StandardScaler.fit(params["train"])


class CategoryEncoder:
    """Category strings to codes 1..n in the fitted vocabulary's order; 0 for a category never seen."""

    def __init__(self, vocabulary):
        self.vocabulary = vocabulary
        self._codes = {word: code for code, word in enumerate(vocabulary.tolist(), start=1)}

    @classmethod
    def fit(cls, words):
        # Sorted: a set's iteration order follows the process's hash seed.
        return cls(np.asarray(sorted(set(words.tolist())), dtype=str))

    def __call__(self, rows):
        # Rows arrive as indices into CITIES: backends move numbers, not strings.
        codes = np.array([self._codes.get(w, 0) for w in CITIES[rows].tolist()], dtype=np.int64)
        return {"codes": codes, "one_hot": (codes[:, None] == np.arange(len(self.vocabulary) + 1)).astype(np.float32)}

    def get_state(self):
        return {"vocabulary": self.vocabulary}

    @classmethod
    def from_state(cls, state):
        return cls(np.asarray(state["vocabulary"], dtype=str))


CITIES = np.array(["Zürich", "Paris", "São Paulo", "Kyiv", "Lagos", "Osaka", "Lima", "Québec", "Perth", "Oslo"])

encoder = case(
    "roundtrip/category_encoder",
    tags={"roundtrip", "preprocessing"},
    description="a vocabulary of 8 city names fitted on training rows, saved, rebuilt and applied to serving rows "
                "that hold 2 unseen cities",
    params=lambda rng: {"train": rng.integers(0, 8, 1000)},
    inputs=lambda rng: {"rows": rng.integers(0, len(CITIES), 400)},
)


@encoder.impl("numpy", backend="numpy", module=True, dtypes=("int64",), modes=MODES)
def _(params):
    return CategoryEncoder.fit(CITIES[params["train"]])
