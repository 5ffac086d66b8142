"""Split a run's selection into N stable, balanced shards (``detharness run --shard I/N``).

The partition is a pure function of the selected variants (their ids and backends, after ``-k``,
``--tag``, ``--backend``, ``--device``, ``--check`` and what the checks need were applied) and of the
cost table shipped with the package (:mod:`detharness.shard_costs`), so every runner of a CI matrix
computes the same one without talking to the others:

- a case's variants form one unit that is never split: a reference, a CPU twin and whatever else a
  check needs (all of them variants of the same case) run in the shard of the variants needing them;
- a unit costs the sum of its variants' costs, in whole milliseconds: the table's measured time for
  a known variant id, else its backend's default, else the table's overall default;
- units are taken by decreasing cost (ties by case id) and each goes to the shard with the least
  cost so far (ties to the lowest index): greedy LPT, deterministic.

Every shard records ``I/N`` and the :func:`selection_hash` of the whole selection, so that
``detharness merge`` (:mod:`detharness.merge`) can refuse a missing shard, a duplicated one or a
shard of another selection.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from detharness.errors import UsageError

_SHARD_TEXT = re.compile(r"(\d+)/(\d+)")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` as ``(I, N)`` with 1 <= I <= N; anything else is a one-line :class:`UsageError`."""
    found = _SHARD_TEXT.fullmatch(text.strip())
    if found is None:
        raise UsageError(f"--shard {text!r}: give I/N, this runner's shard I of N (1 <= I <= N), e.g. --shard 2/4")
    index, count = int(found[1]), int(found[2])
    check_shard(index, count)
    return index, count


def check_shard(index: int, count: int) -> None:
    if count < 1:
        raise UsageError(f"--shard {index}/{count}: the number of shards N must be at least 1")
    if not 1 <= index <= count:
        raise UsageError(f"--shard {index}/{count}: the shard I must be from 1 to {count}")


def variant_cost(variant_id: str, backend: str, costs: Mapping[str, float] | None = None,
                 defaults: Mapping[str, float] | None = None, default: float | None = None) -> int:
    """What one variant is expected to cost, in whole milliseconds (at least 1)."""
    if costs is None or defaults is None or default is None:
        from detharness import shard_costs

        costs = shard_costs.COSTS if costs is None else costs
        defaults = shard_costs.BACKEND_DEFAULTS if defaults is None else defaults
        default = shard_costs.DEFAULT if default is None else default
    seconds = costs.get(variant_id)
    if seconds is None:
        seconds = defaults.get(backend, default)
    return max(1, round(seconds * 1000))


def unit_costs(variants: Iterable[tuple[str, str, str]], **table: Any) -> dict[str, int]:
    """Case id -> the summed cost of its variants, from ``(case id, variant id, backend)`` triples."""
    units: dict[str, int] = {}
    for case_id, variant_id, backend in variants:
        units[case_id] = units.get(case_id, 0) + variant_cost(variant_id, backend, **table)
    return units


def partition(units: Mapping[str, int], count: int) -> list[list[str]]:
    """The unit ids of each of ``count`` shards (index 0 is shard 1): greedy LPT.

    Units go by decreasing cost, ties by id, each to the shard with the least cost so far, ties to
    the lowest index. No shard ends more than the largest unit's cost above the mean.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    loads = [0] * count
    shards: list[list[str]] = [[] for _ in range(count)]
    for unit, cost in sorted(units.items(), key=lambda item: (-item[1], item[0])):
        lightest = min(range(count), key=lambda i: (loads[i], i))
        shards[lightest].append(unit)
        loads[lightest] += cost
    return shards


def selection_hash(variant_ids: Iterable[str], settings: Mapping[str, Any]) -> str:
    """sha256 over the whole selection (every selected variant id, sorted) and the settings that
    change results; equal for every shard of one run, different for any other selection."""
    payload = {"variants": sorted(variant_ids), "settings": dict(settings)}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def shard_text(index: int, count: int) -> str:
    return f"{index}/{count}"


def missing_text(missing: Sequence[int], count: int) -> str:
    """``"shard 2 of 3 missing"``, ``"shards 2, 3 of 3 missing"``."""
    noun = "shard" if len(missing) == 1 else "shards"
    return f"{noun} {', '.join(str(i) for i in missing)} of {count} missing"
