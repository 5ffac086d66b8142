"""Join the bundles of every shard of one run (``detharness run --shard I/N``) into one run record.

The merged record is what the unsharded run records: the shards' cases and variants in the order
of the whole selection, the union of their fingerprints (each backend's worker adds its own
framework's keys, so shards that ran different backends record different key sets) and its
environment id recomputed from that union, the shard marks cleared (``shard: null``, as an
unsharded run writes them). The caller reruns the run's checks on it (:func:`merge_shards` says
which).

Anything that puts the set of shards in doubt is a one-line :class:`~detharness.errors.UsageError`
(exit 2): a bundle that is not a shard, shards of different selections (another ``-k``, other
options, other case code), a missing or duplicated shard, a fingerprint key two shards both record
with different values, a case or variant recorded twice differently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from detharness import environment as env_mod
from detharness.errors import UsageError
from detharness.record import CaseRecord, RunRecord, VariantRecord
from detharness.shard import missing_text, shard_text


@dataclass
class _Shard:
    record: RunRecord
    label: str
    index: int
    count: int
    selection: str
    checks: list[str]
    selected: int

    @property
    def name(self) -> str:
        return f"shard {shard_text(self.index, self.count)} ({self.label})"


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _shard_of(record: RunRecord, label: str) -> _Shard:
    info = record.options.get("shard")
    if not isinstance(info, Mapping):
        raise UsageError(f"merge: {label} is not a shard bundle (it was not run with --shard I/N)")
    index, count, selection = info.get("index"), info.get("count"), info.get("selection")
    checks, selected = info.get("checks"), info.get("selected")
    if not (isinstance(index, int) and isinstance(count, int) and isinstance(selected, int)
            and _is_count(index) and _is_count(count) and _is_count(selected) and 1 <= index <= count
            and isinstance(selection, str) and isinstance(checks, list) and all(isinstance(c, str) for c in checks)):
        raise UsageError(f"merge: {label}: its shard options are malformed (index, count, selection, checks, "
                         "selected)")
    for vid, v in record.variants.items():
        mark = v.shard
        if not (isinstance(mark, Mapping) and mark.get("index") == index and mark.get("count") == count
                and mark.get("selection") == selection and _is_count(mark.get("position"))):
            raise UsageError(f"merge: {label}: variant {vid} is not marked as shard {shard_text(index, count)} of the "
                             "bundle's selection")
    return _Shard(record, label, index, count, selection, list(checks), selected)


def _check_set(shards: Sequence[_Shard]) -> list[_Shard]:
    """The shards by index, after refusing another selection, a duplicate or a gap."""
    first = shards[0]
    for s in shards[1:]:
        if s.count != first.count or s.selection != first.selection or s.checks != first.checks \
                or s.selected != first.selected:
            raise UsageError(f"merge: {first.label} and {s.label} are shards of different selections "
                             f"({shard_text(first.index, first.count)} of {first.selection[:12]}, "
                             f"{shard_text(s.index, s.count)} of {s.selection[:12]})")
    by_index: dict[int, _Shard] = {}
    for s in shards:
        if s.index in by_index:
            raise UsageError(f"merge: shard {shard_text(s.index, s.count)} given twice: {by_index[s.index].label} and "
                             f"{s.label}")
        by_index[s.index] = s
    missing = [i for i in range(1, first.count + 1) if i not in by_index]
    if missing:
        raise UsageError(f"merge: {missing_text(missing, first.count)}")
    return [by_index[i] for i in sorted(by_index)]


def merged_environment(shards: Sequence[_Shard]) -> dict[str, Any]:
    """The union of the shards' fingerprints, after refusing a key two shards record differently
    (volatile keys, which the environment id leaves out, are taken from the lowest shard)."""
    for i, a in enumerate(shards):
        for b in shards[i + 1:]:
            common = set(a.record.environment) & set(b.record.environment)
            for key in sorted(common - env_mod.VOLATILE_KEYS):
                left, right = a.record.environment[key], b.record.environment[key]
                if left != right:
                    raise UsageError(f"merge: {a.name} and {b.name} disagree on fingerprint key {key!r}: "
                                     f"{env_mod.format_value(left)} vs {env_mod.format_value(right)}")
    union: dict[str, Any] = {}
    for s in shards:
        for key, value in s.record.environment.items():
            union.setdefault(key, value)
    return dict(sorted(union.items()))


def merge_shards(records: Sequence[RunRecord], labels: Sequence[str]) -> tuple[RunRecord, list[str]]:
    """One run record from the records of every shard of one run, and the checks the shards ran
    (to rerun on it). Refusals are one-line :class:`UsageError`\\ s."""
    if not records:
        raise UsageError("merge: give the bundles of every shard")
    shards = _check_set([_shard_of(r, label) for r, label in zip(records, labels, strict=True)])

    cases: dict[str, tuple[CaseRecord, _Shard]] = {}
    variants: dict[str, tuple[VariantRecord, _Shard]] = {}
    for s in shards:
        for cid, c in s.record.cases.items():
            if cid in cases:
                other, where = cases[cid]
                if (other.fingerprint, other.inputs_digest) != (c.fingerprint, c.inputs_digest):
                    raise UsageError(f"merge: case {cid} differs between {where.name} and {s.name} (its code or its "
                                     "inputs)")
                continue
            cases[cid] = (c, s)
        for vid, v in s.record.variants.items():
            if vid in variants:
                raise UsageError(f"merge: variant {vid} is recorded by both {variants[vid][1].name} and {s.name}")
            variants[vid] = (v, s)
    selected = shards[0].selected
    if len(variants) != selected:
        raise UsageError(f"merge: the shards hold {len(variants)} variants of the {selected} their selection has")
    environment = merged_environment(shards)

    # The order of the whole selection, as the unsharded run records it; the cases in the order
    # their first variant comes.
    ordered = sorted((v for v, _ in variants.values()), key=lambda v: (v.shard or {}).get("position", 0))
    case_order = list(dict.fromkeys([*(v.case for v in ordered), *cases]))
    for v in ordered:
        v.shard = None
    first = shards[0].record
    record = RunRecord(
        environment=environment, environment_id=env_mod.environment_id(environment),
        cases={cid: cases[cid][0] for cid in case_order if cid in cases},
        variants={v.id: v for v in ordered}, options={**first.options, "shard": None},
        created=min((s.record.created for s in shards if s.record.created), default=first.created),
    )
    return record, list(shards[0].checks)
