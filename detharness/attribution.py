"""N-way compare: many bundles against a baseline, a case x environment matrix, and attribution.

A single compare says "this output changed, and these fingerprint keys differ between the two
bundles". With many bundles (a matrix of ISA levels, thread counts and pinned versions, or CI's x86,
ARM and GPU runners) most of those keys are noise: what explains a divergence is the key whose
values separate the environments that diverge from the ones that agree. For each (variant, output)
this module finds those keys, exactly where one key does it, otherwise the smallest set that does,
and says it in one line:

    every environment with torch.cpu_capability=DEFAULT [aten-default] differs from the baseline on
    models/softmax[torch:cpu:float32:eager] y (close, 3 ulp); the 6 with torch.cpu_capability=AVX512 agree

"Differs" means not bitwise identical to the baseline (``close`` counts: across environments a
changed bit is the news, even within tolerance). Environments where the variant errored, was
skipped or is missing say nothing either way and are left out of the separation.

Everything here works on loaded :class:`~detharness.record.RunRecord` objects and result dicts; it
imports no framework.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from detharness import checks
from detharness.bundle import encode_array
from detharness.cases import parse_variant_id
from detharness.compare import Status
from detharness.environment import VOLATILE_KEYS, format_value
from detharness.errors import CaseError
from detharness.record import LazyArrays, RunRecord, VariantRecord
from detharness.report._format import number
from detharness.results import Outcome, Result, worst

# Statuses that mean "not the baseline's bits" and "the baseline's bits"; the rest (error, skipped,
# missing) leave an environment out of the separation for that output.
DIFFERS: frozenset[Status] = frozenset({Status.CLOSE, Status.KNOWN, Status.FLIPPED, Status.DIVERGED, Status.MISMATCH})
AGREES: frozenset[Status] = frozenset({Status.IDENTICAL})
NOT_COMPARED: frozenset[Status] = frozenset({Status.SKIPPED, Status.MISSING})

# Searching every pair and triple of varying keys is cheap for a local matrix (a dozen keys vary) but
# not for runners that differ in a hundred keys; past these counts the larger sets are not tried.
MAX_KEYS_FOR_PAIRS = 200
MAX_KEYS_FOR_TRIPLES = 40
MAX_SET_SIZE = 3
# How many (variant, output) members and alternative key sets one line names before "+N more".
LINE_MEMBERS = 3
LINE_ALTERNATIVES = 3

#: The key under which attribution weighs a case's own fingerprint (its code and options), as the
#: environment check's ``env_diff`` names it: a changed case is named as a code change.
CASE_KEY = "case.fingerprint"

# Fingerprint prefixes that belong to a backend: for a torch variant, torch.cpu_capability explains
# more than env.ATEN_CPU_CAPABILITY (the variable may be unknown and fall back), and both explain
# more than an unrelated key that happens to co-vary.
_BACKEND_PREFIXES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "jax": ("jax", "jaxlib"),
    "numpy": ("numpy", "blas"),
    "onnxruntime": ("onnxruntime", "onnx"),
}


@dataclass(frozen=True)
class Environment:
    """One compared bundle: its display label, environment id and fingerprint."""

    label: str
    id: str
    fingerprint: Mapping[str, Any]


def bundle_labels(paths: Sequence[str]) -> list[str]:
    """Short, unique display names for bundles: the folder's name, else the path as given.

    ``bundles/x86-cpu`` and ``bundles/arm-cpu`` read as ``x86-cpu`` and ``arm-cpu``; two folders of
    one name (``a/run`` and ``b/run``) keep their paths; the same path twice gets ``#2``.
    """
    names = [os.path.basename(os.path.normpath(p)) or p for p in paths]
    labels = [n if names.count(n) == 1 else os.path.normpath(p) for n, p in zip(names, paths, strict=True)]
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return unique


def compare_bundles(records: Sequence[RunRecord], labels: Sequence[str], *, match_device: str = "same",
                    keyword: str | None = None, all_pairs: bool = False) -> tuple[list[Result], dict[str, Any]]:
    """The first record is the baseline; every other one is compared against it.

    Returns the results (each tagged with ``baseline_label`` and ``candidate_label``) and the report
    sections N-way compare adds: ``matrix`` (case x environment and variant x environment, worst
    status) and ``attribution``, when there are more than two bundles or ``all_pairs`` is asked
    for; ``all_pairs`` adds ``matrix["pairs"]``, how many outputs differ bitwise between every
    two bundles (from the stored hashes, so it costs no array read).
    """
    if len(records) != len(labels) or len(records) < 2:
        raise ValueError("compare_bundles needs a baseline and at least one candidate, one label each")
    baseline, base_label = records[0], labels[0]
    results: list[Result] = []
    for label, candidate in zip(labels[1:], records[1:], strict=True):
        results += [result.replace(baseline_label=base_label, candidate_label=label)
                    for result in checks.environment_check(baseline, candidate, match_device=match_device,
                                                           keyword=keyword)]
    extra: dict[str, Any] = {}
    if len(records) > 2 or all_pairs:
        environments = [Environment(label, r.environment_id, r.environment) for label, r in zip(labels, records, strict=True)]
        backends = {vid: v.backend for r in records for vid, v in r.variants.items()}
        extra["matrix"] = build_matrix(environments, results)
        extra["attribution"] = attribute(results, environments, backends=backends,
                                         outcomes=variant_outcomes(records, labels),
                                         case_fingerprints=case_fingerprints(records, labels))
        if all_pairs:
            extra["matrix"]["pairs"] = pairwise_differences(records, labels, match_device=match_device,
                                                            keyword=keyword)
    return results, extra


def build_matrix(environments: Sequence[Environment], results: Iterable[Result]) -> dict[str, Any]:
    """Case x environment and variant x environment: the worst status against the baseline.

    ``skipped`` and ``missing`` count only where nothing was compared: a case whose CUDA or bfloat16
    variants cannot run here still shows whether the ones that ran agree. Columns are labels (two
    bundles may share an environment id, say two runs of one profile); ``ids`` maps each label to
    its environment id.
    """
    base, candidates = environments[0], environments[1:]
    seen: dict[str, dict[str, dict[str, list[Status]]]] = {"cases": {}, "variants": {}}
    for r in results:
        label = r.candidate_label
        if label is None:
            continue
        for table, key in (("cases", r.case), ("variants", r.variant)):
            seen[table].setdefault(key, {}).setdefault(label, []).append(r.status)

    def cell(statuses: list[Status]) -> str:
        compared = [s for s in statuses if s not in NOT_COMPARED] or statuses
        return worst(compared).value

    cases, variants = ({key: {label: cell(statuses) for label, statuses in row.items()}
                        for key, row in sorted(seen[table].items())} for table in ("cases", "variants"))
    return {
        "baseline": base.label,
        "environments": [e.label for e in candidates],
        "ids": {e.label: e.id for e in environments},
        "cases": cases,
        "variants": variants,
    }


def _value(fp: Mapping[str, Any], key: str) -> Any:
    value = fp.get(key)
    return tuple(value) if isinstance(value, list) else value


#: Keys that name a cause before any other key separating the same environments: an emulated
#: aarch64 profile also differs from the x86 host in Python's patch release, libc, BLAS build and
#: the frameworks' builds, but "the ARM environments differ" is the line a reader needs.
_FIRST_KEYS: frozenset[str] = frozenset({"machine.arch"})


def _key_rank(key: str, prefixes: tuple[str, ...]) -> int:
    if key in _FIRST_KEYS:
        return -1
    head = key.split(".", 1)[0]
    if head in prefixes:
        return 0
    return 1 if head == "env" else 2


def separating_keys(differing: Sequence[Mapping[str, Any]], agreeing: Sequence[Mapping[str, Any]], *,
                    prefer: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every smallest set of fingerprint keys whose values tell the differing from the agreeing.

    A set separates when no differing environment has the same values on those keys as an agreeing
    one. One key is tried first, then pairs, then triples (bounded, see ``MAX_KEYS_FOR_*``); the
    first size that separates is returned, best first: sets that separate as a disjunction (each
    differing environment has, on one of the keys, a value no agreeing one has: two causes, such
    as an older jax and an XLA flag, each explaining its own environments), then keys of the
    variant's backend (``prefer``), then variables, then the rest; then sets that give the
    differing environments fewer distinct values (a shared value is a stronger statement). Empty
    when nothing up to triples separates: environments alike in every recorded key disagree
    (nondeterminism, or an unrecorded cause).
    """
    everything = [*differing, *agreeing]
    keys = sorted({k for fp in everything for k in fp} - VOLATILE_KEYS)
    varying = [k for k in keys if len({_value(fp, k) for fp in everything}) > 1]
    limits = {1: len(varying), 2: MAX_KEYS_FOR_PAIRS, 3: MAX_KEYS_FOR_TRIPLES}
    for size in range(1, MAX_SET_SIZE + 1):
        if len(varying) > limits[size]:
            break
        found = []
        for combo in itertools.combinations(varying, size):
            d_values = {tuple(_value(fp, k) for k in combo) for fp in differing}
            a_values = {tuple(_value(fp, k) for k in combo) for fp in agreeing}
            if d_values.isdisjoint(a_values):
                found.append((not is_disjunction(differing, agreeing, combo), sum(_key_rank(k, prefer) for k in combo),
                              len(d_values), combo))
        if found:
            return [combo for *_, combo in sorted(found)]
    return []


def is_disjunction(differing: Sequence[Mapping[str, Any]], agreeing: Sequence[Mapping[str, Any]],
                   keys: Sequence[str]) -> bool:
    """Whether every differing environment has, on one of ``keys``, a value no agreeing one has."""
    unseen = {k: {_value(fp, k) for fp in differing} - {_value(fp, k) for fp in agreeing} for k in keys}
    return all(any(_value(fp, k) in unseen[k] for k in keys) for fp in differing)


def _any_of(differing: Sequence[Mapping[str, Any]], agreeing: Sequence[Mapping[str, Any]],
            keys: Sequence[str]) -> list[list[Any]]:
    """For a disjunction: each key with the differing environments' values that no agreeing one has."""
    out = []
    for k in keys:
        unseen = {_value(fp, k) for fp in differing} - {_value(fp, k) for fp in agreeing}
        if unseen:
            out.append([k, sorted(format_value(v) for v in unseen)])
    return out


def _prefixes(variant: str, backend: str | None) -> tuple[str, ...]:
    """The fingerprint prefixes of the backends a variant runs on (an onnx mode runs in onnxruntime),
    and the case's own (``case.fingerprint``): a changed case explains its variants first."""
    try:
        _case, impl, _device, _dtype, mode = parse_variant_id(variant)
    except CaseError:
        impl, mode = "", ""
    names = [backend or impl]
    if mode.startswith("onnx"):
        names.append("onnxruntime")
    return ("case", *(p for name in names for p in _BACKEND_PREFIXES.get(name, (name,))))


def _condition(keys: Sequence[str], tuples: Iterable[tuple[Any, ...]]) -> str:
    shown = sorted({tuple(format_value(v) for v in t) for t in tuples})
    if len(keys) == 1:
        values = [t[0] for t in shown]
        return f"{keys[0]}={values[0]}" if len(values) == 1 else f"{keys[0]} in {{{', '.join(values)}}}"
    if len(shown) == 1:
        return ", ".join(f"{k}={v}" for k, v in zip(keys, shown[0], strict=True))
    return f"({', '.join(keys)}) in {{{', '.join('(' + ', '.join(t) + ')' for t in shown)}}}"


def variant_outcomes(records: Sequence[RunRecord], labels: Sequence[str]) -> dict[str, dict[str, str]]:
    """variant id -> label -> ``ok`` or ``error``: whether each bundle ran the variant (skips left out)."""
    outcomes: dict[str, dict[str, str]] = {}
    for label, record in zip(labels, records, strict=True):
        for vid, v in record.variants.items():
            if v.status in (Outcome.OK, Outcome.ERROR):
                outcomes.setdefault(vid, {})[label] = v.status.value
    return outcomes


def case_fingerprints(records: Sequence[RunRecord], labels: Sequence[str]) -> dict[str, dict[str, str]]:
    """case id -> label -> the case's fingerprint in that bundle (where the bundle has the case)."""
    found: dict[str, dict[str, str]] = {}
    for label, record in zip(labels, records, strict=True):
        for case_id, case in record.cases.items():
            found.setdefault(case_id, {})[label] = case.fingerprint
    return found


def attribute(results: Iterable[Result], environments: Sequence[Environment], *,
              backends: Mapping[str, str] | None = None,
              outcomes: Mapping[str, Mapping[str, str]] | None = None,
              case_fingerprints: Mapping[str, Mapping[str, str]] | None = None) -> list[dict[str, Any]]:
    """Attribution entries, one per group of outputs that diverge in the same environments for the same keys.

    ``environments[0]`` is the baseline; results carry ``candidate_label``. An entry of kind
    ``differs`` separates the environments whose output is not the baseline's bits from those whose
    output is; one of kind ``errors`` (from ``outcomes``, see :func:`variant_outcomes`) separates
    the environments where a variant errored from those where it ran, as when a library version
    cannot load a model the other writes. Each entry holds the labels on each side (and those not
    compared), the best separating ``keys`` with the values on each side, ``alternatives`` (other
    key sets that separate as well), its ``members`` (variant, output, status, max ULP), the worst
    ``status``, and ``line``, the sentence the reports print.

    ``case_fingerprints`` (see :func:`case_fingerprints`) adds each case's own fingerprint to the
    environments of its variants as ``case.fingerprint``: a case whose code changed between the
    bundles is named as the cause ("the case's code changed") rather than left unexplained.
    """
    backends = backends or {}
    by_label = {e.label: e for e in environments}
    base = environments[0]
    rows: dict[tuple[str, str | None], dict[str, Result]] = {}
    for r in results:
        label = r.candidate_label
        if label is not None and label in by_label:
            rows.setdefault((r.variant, r.output), {})[label] = r
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    separations: dict[tuple[Any, ...], list[tuple[str, ...]]] = {}

    def fingerprint(label: str, case: str) -> Mapping[str, Any]:
        own = (case_fingerprints or {}).get(case)
        if not own:
            return by_label[label].fingerprint
        return {**by_label[label].fingerprint, CASE_KEY: own.get(label)}

    def add(kind: str, variant: str, differing: list[str], agreeing: list[str], member: dict[str, Any]) -> None:
        unknown = sorted(e.label for e in environments if e.label not in differing and e.label not in agreeing)
        prefer = _prefixes(variant, backends.get(variant))
        d_fps = [fingerprint(x, member["case"]) for x in differing]
        a_fps = [fingerprint(x, member["case"]) for x in agreeing]
        own = (case_fingerprints or {}).get(member["case"]) or {}
        memo = (tuple(differing), tuple(agreeing), prefer, tuple(own.get(x) for x in (*differing, *agreeing)))
        if memo not in separations:
            separations[memo] = separating_keys(d_fps, a_fps, prefer=prefer)
        found = separations[memo]
        keys = found[0] if found else ()
        d_values = sorted({tuple(format_value(_value(fp, k)) for k in keys) for fp in d_fps})
        a_values = sorted({tuple(format_value(_value(fp, k)) for k in keys) for fp in a_fps})
        group_key = (kind, tuple(differing), tuple(agreeing), keys, tuple(d_values))
        if group_key not in groups:
            groups[group_key] = {
                "kind": kind, "differing": differing, "agreeing": agreeing, "not_compared": unknown,
                "keys": list(keys), "values": {"differing": [list(t) for t in d_values],
                                               "agreeing": [list(t) for t in a_values]},
                # several keys that each explain some of the environments: "K1=a or K2=b"
                "any_of": _any_of(d_fps, a_fps, keys) if len(keys) > 1 and is_disjunction(d_fps, a_fps, keys) else None,
                "alternatives": [list(k) for k in found[1:]], "exact": bool(found), "members": [],
            }
        groups[group_key]["members"].append(member)

    for (variant, output), per_label in rows.items():
        differing = sorted(label for label, r in per_label.items() if r.status in DIFFERS)
        if not differing:
            continue
        agreeing = [base.label, *sorted(label for label, r in per_label.items() if r.status in AGREES)]
        bad = max((per_label[x] for x in differing), key=lambda r: r.status.severity)
        numeric = [u for u in (per_label[x].max_ulp for x in differing) if isinstance(u, (int, float))]
        add("differs", variant, differing, agreeing, {"case": bad.case, "variant": variant, "output": output,
                                                      "status": bad.status.value,
                                                      "max_ulp": max(numeric) if numeric else None})
    compared = {variant for variant, _output in rows}
    for variant, ran in (outcomes or {}).items():
        failing = sorted(label for label, status in ran.items() if status == Outcome.ERROR and label in by_label)
        running = [e.label for e in environments if ran.get(e.label) == Outcome.OK]
        if variant not in compared or not failing or not running:
            continue  # errors everywhere say nothing about the environment
        case = variant.split("[", 1)[0]
        add("errors", variant, failing, running, {"case": case, "variant": variant, "output": None, "status": Status.ERROR.value,
                                                  "max_ulp": None})

    entries = []
    for group in groups.values():
        group["members"].sort(key=lambda m: (-Status(m["status"]).severity, m["variant"], m["output"] or ""))
        group["status"] = group["members"][0]["status"]
        group["line"] = _line(group, base.label)
        entries.append(group)
    entries.sort(key=lambda g: (-Status(g["status"]).severity, -len(g["members"]), g["line"]))
    return entries


def _member_text(member: Mapping[str, Any]) -> str:
    what = member["variant"] + (f" {member['output']}" if member.get("output") else "")
    detail = member["status"]
    if member.get("max_ulp") is not None:
        detail += f", {number(member['max_ulp'])} ulp"
    return f"{what} ({detail})"


def _line(group: Mapping[str, Any], baseline: str) -> str:
    members = group["members"]
    what = ", ".join(_member_text(m) for m in members[:LINE_MEMBERS])
    if len(members) > LINE_MEMBERS:
        what += f" and {len(members) - LINE_MEMBERS} more"
    who = ", ".join(group["differing"])
    agreeing = group["agreeing"]
    errors = group.get("kind") == "errors"
    verb = "fails on" if errors else f"differs from {baseline} on"
    others = "run it" if errors else "agree"
    if not group["keys"]:
        return (f"no recorded key separates the environments that {'fail' if errors else 'differ'} [{who}] from the "
                f"{len(agreeing)} that {others}, on {what}: nondeterminism, or a cause the fingerprint does not record")
    keys = group["keys"]
    if group.get("any_of"):
        d_cond = " or ".join(_condition([k], [(v,) for v in values]) for k, values in group["any_of"])
        line = f"every environment with {d_cond} [{who}] {verb} {what}; the {len(agreeing)} others {others}"
    else:
        d_cond = _condition(keys, [tuple(t) for t in group["values"]["differing"]])
        a_cond = _condition(keys, [tuple(t) for t in group["values"]["agreeing"]])
        line = f"every environment with {d_cond} [{who}] {verb} {what}; the {len(agreeing)} with {a_cond} {others}"
    alternatives = group["alternatives"]
    if alternatives:
        shown = ["+".join(a) for a in alternatives[:LINE_ALTERNATIVES]]
        if len(alternatives) > LINE_ALTERNATIVES:
            shown.append(f"{len(alternatives) - LINE_ALTERNATIVES} more")
        line += f" (also separated by {', '.join(shown)})"
    if CASE_KEY in keys:  # a code change, not the environment: say so first
        line = f"the case's code changed: {line}"
    return line


def _output_digests(v: VariantRecord) -> dict[str, str]:
    """Each output's dtype, shape and content hash: the bundle's stored ref where there is one, else
    the ref a bundle would store (the same form, so a loaded record and an in-memory one compare)."""
    if isinstance(v.outputs, LazyArrays):
        refs: Mapping[str, Mapping[str, Any]] = v.outputs.refs
    else:
        refs = {name: encode_array(arr)[0] for name, arr in v.outputs.items()}
    return {name: f"{ref.get('dtype')}|{ref.get('shape')}|{ref.get('sha256')}" for name, ref in refs.items()}


def pairwise_differences(records: Sequence[RunRecord], labels: Sequence[str], *, match_device: str = "same",
                         keyword: str | None = None) -> list[dict[str, Any]]:
    """For every two bundles: how many outputs both ran, and how many of those differ in any bit."""
    from detharness.select import compile_expression

    match = compile_expression(keyword) if keyword else None
    digests: dict[int, dict[str, str]] = {}  # by id(VariantRecord): each bundle is in N-1 pairs, hashed once

    def digests_of(v: VariantRecord) -> dict[str, str]:
        if id(v) not in digests:
            digests[id(v)] = _output_digests(v)
        return digests[id(v)]

    pairs = []
    for (i, a), (j, b) in itertools.combinations(enumerate(records), 2):
        compared = differing = 0
        for vid, va, vb in checks.pair_variants(a, b, match_device):
            if va is None or vb is None or va.status != Outcome.OK or vb.status != Outcome.OK:
                continue
            if match is not None and not match(vid, checks.record_keywords(b.cases.get(vb.case), vb)):
                continue
            da, db = digests_of(va), digests_of(vb)
            for name in set(da) | set(db):
                compared += 1
                differing += da.get(name) != db.get(name)
        pairs.append({"a": labels[i], "b": labels[j], "compared": compared, "differing": differing})
    return pairs
