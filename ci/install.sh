#!/usr/bin/env bash
# Install detharness and every backend at one CI job's pins, then print the environment.
#   DH_PINS     base pins (default ci/pins/cpu.txt; ci/pins/cuda.txt on a GPU runner)
#   DH_OVERLAY  optional version set laid over them (ci/pins/numpy-2.2.txt, ...), installed --no-deps
set -euo pipefail
cd "$(dirname "$0")/.."
pins="${DH_PINS:-ci/pins/cpu.txt}"
python -m pip install --upgrade pip
if [[ "$pins" == */cpu.txt ]]; then
  # PyPI's x86-64 Linux torch is the CUDA build (GBs); PyTorch's CPU index holds 2.13.0+cpu, which
  # the pin torch==2.13.0 matches and pip prefers. On ARM both are CPU builds.
  export PIP_EXTRA_INDEX_URL="https://download.pytorch.org/whl/cpu"
fi
python -m pip install -e ".[all]" -c "$pins"
if [[ "$pins" == */cuda.txt ]]; then
  python -m pip install "jax[cuda12]" -c "$pins"
fi
if [[ -n "${DH_OVERLAY:-}" ]]; then
  # Only the changed packages, exactly as `detharness matrix` does locally with its overlays.
  python -m pip install --no-deps -r "$DH_OVERLAY"
fi
python -m detharness env
