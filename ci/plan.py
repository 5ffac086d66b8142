#!/usr/bin/env python3
"""Plan the determinism workflow's job matrix and write it to $GITHUB_OUTPUT as ``include=<json>``.

Inputs (environment variables, empty when unset):
  DH_GPU_RUNNER        runner label of a machine with an NVIDIA GPU; empty: no GPU job
  DH_VERSION_PROFILES  "true": also run each version set of ci/pins (numpy-2.2.txt, ...) on both CPUs
Each job gets a unique name, which names its bundle folder and its artifact (bundle-<name>).
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

PINS = Path(__file__).resolve().parent / "pins"
CPU_RUNNERS = (("cpu-x86_64", "ubuntu-latest"), ("cpu-arm64", "ubuntu-24.04-arm"))
# The base pin sets; every other pins file is a version set laid over cpu.txt.
BASE_PINS = ("cpu.txt", "cuda.txt")


def plan(gpu_runner: str, version_profiles: bool) -> list[dict[str, str]]:
    jobs = [{"name": name, "runner": runner, "device": "cpu", "pins": "ci/pins/cpu.txt", "overlay": ""}
            for name, runner in CPU_RUNNERS]
    if gpu_runner.strip():
        # cuda only: the compare job holds these CUDA outputs against the CPU runners' (--match-device any)
        jobs.append({"name": "gpu-cuda", "runner": gpu_runner.strip(), "device": "cuda", "pins": "ci/pins/cuda.txt",
                     "overlay": ""})
    if version_profiles:
        for pins in sorted(PINS.glob("*.txt")):
            if pins.name in BASE_PINS:
                continue
            for name, runner in CPU_RUNNERS:
                jobs.append({"name": f"{name}-{pins.stem}", "runner": runner, "device": "cpu",
                             "pins": "ci/pins/cpu.txt", "overlay": f"ci/pins/{pins.name}"})
    return jobs


def main() -> int:
    jobs = plan(os.environ.get("DH_GPU_RUNNER", ""), os.environ.get("DH_VERSION_PROFILES", "").lower() == "true")
    line = "include=" + json.dumps(jobs, separators=(",", ":"))
    output = os.environ.get("GITHUB_OUTPUT")
    if output:
        with open(output, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    print(json.dumps(jobs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
