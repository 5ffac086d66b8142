"""What users import is importable from ``detharness`` and listed in ``__all__``, without a framework."""

from __future__ import annotations

import subprocess
import sys

import detharness

PUBLIC = {"case", "include", "roundtrip_modes", "UnsupportedVariant", "register_backend", "compare", "ulp_distance",
          "Tolerance", "Status", "Result", "Context"}


def test_public_names_are_exported() -> None:
    assert set(detharness.__all__) >= PUBLIC
    for name in detharness.__all__:
        assert hasattr(detharness, name), name


def test_importing_detharness_imports_no_framework() -> None:
    code = ("import sys, detharness; heavy = [m for m in ('torch', 'jax', 'onnxruntime', 'onnx') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
