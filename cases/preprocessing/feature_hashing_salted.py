"""Feature hashing with Python's ``hash()``: salted per process, so buckets differ between processes.

``hash(str)`` is SipHash keyed by a random salt drawn when the interpreter starts, unless
``PYTHONHASHSEED`` is set (Python docs: ``object.__hash__``, ``PYTHONHASHSEED``). A pipeline that
hashes with ``hash(s) % n`` in the training job and again in the serving process puts the same
string in different buckets. Here the training process is the worker that runs the case; the
serving process is a fresh interpreter started with the same environment. They diverge on every run
unless ``PYTHONHASHSEED`` is fixed (to the same integer) for both, in which case the report flags
the declaration as stale; bundles from two runs diverge the same way in ``compare``. Fix: a stable
hash of the UTF-8 bytes (``preprocessing/feature_hashing``; sklearn's ``FeatureHasher`` uses
MurmurHash3 with seed 0).
"""

import json
import subprocess
import sys

import numpy as np

from detharness import case

N_BUCKETS = 1000
WIDTH = 24
VALUES = ["Berlin", "Kraków", "São Paulo", "Zürich", "Ōsaka", "android", "ios", "web", "café", "straße"]


def _code_points(strings):
    return np.array(strings, dtype=f"<U{WIDTH}").view(np.uint32).reshape(len(strings), WIDTH)


def _strings(code_points):
    return np.ascontiguousarray(code_points).view(f"<U{WIDTH}")[:, 0].tolist()


c = case(
    "preprocessing/feature_hashing_salted",
    tags={"preprocessing"},
    description="256 strings to hash(s) % 1000 in this process and in a fresh one",
    inputs=lambda rng: {"text": _code_points([f"f{i % 4}={v}" for i, v in enumerate(rng.choice(VALUES, 256))])},
)


@c.impl("training-process", backend="numpy", reference=True, dtypes=("uint32",))
def _(text):
    return {"bucket": np.array([hash(s) % N_BUCKETS for s in _strings(text)], dtype=np.int64)}


@c.impl("serving-process", backend="numpy", dtypes=("uint32",))
def _(text):
    # The same line as the training process, in a fresh interpreter that inherits this environment.
    program = f"import json, sys; print(json.dumps([hash(s) % {N_BUCKETS} for s in json.load(sys.stdin)]))"
    done = subprocess.run([sys.executable, "-c", program], input=json.dumps(_strings(text)),
                          capture_output=True, text=True, check=True, timeout=60)
    return {"bucket": np.array(json.loads(done.stdout), dtype=np.int64)}


c.known_divergence(
    "Python's hash() of a str is salted per process unless PYTHONHASHSEED is fixed: "
    "another process puts strings in other buckets",
    variants="*[serving-process:*",
    checks=("backend", "repeat", "environment"),
)
c.known_divergence(
    "Python's hash() of a str is salted per process unless PYTHONHASHSEED is fixed: "
    "another run puts strings in other buckets",
    variants="*[training-process:*",
    checks=("environment",),
)
