"""Helpers for the backend tests: a fresh interpreter for what must not leak into this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detharness.dtypes import BITS_VIEW, numpy_dtype

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, env: dict[str, str] | None = None, unset: tuple[str, ...] = (), timeout: float = 120) -> Any:
    """Run ``code`` in a fresh interpreter at the repository root; its last stdout line, parsed as JSON.

    Global switches (torch's deterministic flag, XLA_FLAGS, ATEN_CPU_CAPABILITY) are process-wide
    and some are read once at start, so the tests that flip them run here instead of in pytest's
    own process. ``env`` adds variables, ``unset`` removes them.
    """
    full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"subprocess failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def in_subprocess() -> Callable[..., Any]:
    return run_python


def sample_array(name: str, shape: tuple[int, ...] = (3, 4)) -> np.ndarray:
    """Arbitrary bits for floats (NaN payloads and subnormals included), a range for the rest."""
    rng = np.random.default_rng(0)
    size = int(np.prod(shape))
    if name in BITS_VIEW:
        bits: np.ndarray = rng.integers(
            0, np.iinfo(BITS_VIEW[name]).max, size=size, dtype=BITS_VIEW[name], endpoint=True
        )
        result: np.ndarray = bits.view(numpy_dtype(name)).reshape(shape)
    elif name == "bool":
        result = (np.arange(size) % 3 == 0).reshape(shape)
    else:
        result = np.arange(size).astype(numpy_dtype(name)).reshape(shape)
    return result


@pytest.fixture
def sample() -> Callable[..., np.ndarray]:
    return sample_array
