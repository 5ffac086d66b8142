#!/usr/bin/env python3
"""Plan the determinism workflow's job matrix and write it to $GITHUB_OUTPUT as ``include=<json>``.

Inputs (environment variables, empty when unset):
  DH_GPU_RUNNER        runner label of a machine with an NVIDIA GPU; empty: no GPU job
  DH_VERSION_PROFILES  "true": also run each version set of ci/pins (numpy-2.2.txt, ...) on both CPUs
  DH_SHARDS            N, how many jobs share each environment's variants (detharness run --shard I/N);
                       empty or 1: one job per environment, as before sharding existed
Each job gets a unique name, which names its bundle folder and its artifact (bundle-<name>). With N > 1
an environment <env> becomes N jobs <env>-shard-1 ... <env>-shard-N, each with ``env`` (the environment's
name) and ``shard`` ("I/N"; empty without sharding); the compare job merges each environment's shards into
bundle-<env> (ci/merge-shards.sh) before it compares.
Standard library only: it runs before anything is installed. Exit 2 with one line on a bad DH_SHARDS.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

PINS = Path(__file__).resolve().parent / "pins"
CPU_RUNNERS = (("cpu-x86_64", "ubuntu-latest"), ("cpu-arm64", "ubuntu-24.04-arm"))
# The base pin sets, and the emulated aarch64 site of ci/profiles-arm.toml (a whole platform's
# wheels, not a version set); every other pins file is a version set laid over cpu.txt.
BASE_PINS = ("cpu.txt", "cuda.txt", "arm-aarch64.txt")
# GitHub runs at most 256 jobs from one matrix.
MAX_JOBS = 256


def parse_shards(text: str) -> int:
    """DH_SHARDS as a count: empty means 1; anything but a whole number from 1 up is refused."""
    text = text.strip()
    if not text:
        return 1
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ValueError(f"DH_SHARDS must be a whole number from 1 up, not {text!r}")
    return int(text)


def shard(jobs: list[dict[str, str]], shards: int) -> list[dict[str, str]]:
    """Each environment's job as ``shards`` jobs; with 1, the jobs as they are (names and artifacts unchanged)."""
    if shards == 1:
        return [{**job, "env": job["name"], "shard": ""} for job in jobs]
    return [{**job, "name": f"{job['name']}-shard-{index}", "env": job["name"], "shard": f"{index}/{shards}"}
            for job in jobs for index in range(1, shards + 1)]


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
    try:
        shards = parse_shards(os.environ.get("DH_SHARDS", ""))
    except ValueError as error:
        print(f"plan.py: {error}", file=sys.stderr)
        return 2
    jobs = shard(plan(os.environ.get("DH_GPU_RUNNER", ""), os.environ.get("DH_VERSION_PROFILES", "").lower() == "true"),
                 shards)
    if len(jobs) > MAX_JOBS:
        print(f"plan.py: {len(jobs)} jobs, over GitHub's {MAX_JOBS} per matrix: ask for fewer shards", file=sys.stderr)
        return 2
    line = "include=" + json.dumps(jobs, separators=(",", ":"))
    output = os.environ.get("GITHUB_OUTPUT")
    if output:
        with open(output, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    print(json.dumps(jobs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
