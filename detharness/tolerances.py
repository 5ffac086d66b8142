"""Tolerances derived from evidence, and ratcheted: ``detharness tolerances BUNDLE...``.

Every compared output stores ``min_passing``: the smallest tolerance of each kind (``ulp``,
``rtol`` with atol 0, ``atol`` with rtol 0, ``scaled``) that passes it, counting the elements the
tolerance's fraction allows to miss. :func:`needed` folds those over any number of bundles, per
case, output, dtype and backend: the largest of each kind is the smallest tolerance that passes
every result seen. It sets that against the tolerance in force (the result's ``tolerance``, which
is the case's declaration or, where the case declares none, the dtype's default) and measures the
slack, declared over needed:

- ``ulp(n)``: ``n / needed ulp``; ``scaled(k)``: ``k / needed scaled``;
- ``close(rtol, atol)``: ``rtol / needed rtol`` and ``atol / needed atol``, and the rule's slack is
  the larger of the two (each number alone already passes once its ratio is 1 or more, so this is
  a lower bound of the rule's true slack: the two together pass more than either);
- ``exact``: 1 when nothing differed (needed ulp 0), else 0;
- ``a | b``: the loosest alternative, the one with the largest slack (its kind is ``slack_kind``);
  ``a & b``: the tightest part, the smallest slack.

A ratio of a budget over a need of 0 is ``inf`` (0 over 0 is 1); a need of ``inf`` (no budget of
that kind passes: a NaN/inf pattern that differs, or a relative error against an exact zero) gives 0.

Flags: ``ratchet`` when the slack is over :data:`RATCHET` (10x): the declaration is much looser
than any evidence asks for. ``tight`` when a result needed more than the tolerance in force: it
failed (``diverged``, ``mismatch``) or was accepted only as a declared ``known`` divergence, or,
for a rule of one ``ulp``, ``scaled`` or ``exact`` term (where the slack is exact, not a bound),
the slack is under 1. ``varies`` when the bundles judged the row under different tolerances (the
case changed between runs); the declared column shows the last bundle's.

Which results count: every stored verdict with a ``min_passing`` (the ``backend``, ``device`` and
``environment`` checks, a round trip judged with the case's tolerance, and any later check that
judges with it), but not the ``repeat`` and ``rng`` checks nor a bit-for-bit round trip, which
judge with ``exact`` whatever the case declares: no case tolerance can change their verdict.
Skipped, missing and error results carry no measurement and are left out.

:func:`suggest` turns rows into what ``case(tolerance=...)`` accepts, needed x margin, written with
the kind of the declared rule so that the two stay comparable; :func:`write` stores it as JSON and
:func:`from_file` reads it back in a case file. A suggestion never loosens a declared tolerance: an
entry that would be looser than the declaration keeps the declared text and is listed under
``"#looser_than_declared"`` in the file (and in :attr:`Suggestions.looser`).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

from tabulate import tabulate

from detharness._io import atomic_write_text, json_dumps, terminal_safe, to_jsonable
from detharness.cases import parse_variant_id
from detharness.compare.tolerance import (
    AllOf,
    AnyOf,
    Close,
    Exact,
    Rule,
    Scaled,
    Tolerance,
    Ulp,
    all_of,
    format_number,
)
from detharness.compare.verdict import Status, round_up
from detharness.errors import CaseError, ToleranceError
from detharness.record import RunRecord
from detharness.results import Result

__all__ = ["KINDS", "RATCHET", "Row", "Suggestions", "from_file", "main_table", "needed", "render", "suggest",
           "write"]

#: The kinds of ``min_passing``, in the order the tables show them.
KINDS: tuple[str, ...] = ("ulp", "rtol", "atol", "scaled")
#: Slack over which a declared tolerance is flagged as a ratchet candidate.
RATCHET = 10.0
#: Checks that judge with ``exact`` whatever the case declares.
_FIXED_TOLERANCE_CHECKS = frozenset({"repeat", "rng"})
_NOT_MEASURED = frozenset({Status.SKIPPED, Status.ERROR, Status.MISSING})
_FAILED = frozenset({Status.DIVERGED, Status.MISMATCH, Status.KNOWN})
_INF = math.inf


@dataclass(frozen=True)
class Row:
    """One case, output, dtype and backend over every bundle given to :func:`needed`.

    ``needed``: the smallest budget of each kind in :data:`KINDS` that passes every result seen
    (``inf`` where none does). ``declared``: the canonical text of the tolerance in force;
    ``declared_by_case`` is False where the case declares none and the dtype's default applied.
    ``slack``: declared over needed, per kind the declared rule has; ``rule_slack`` the slack of the
    whole rule (see the module docstring), ``slack_kind`` the kind of term it comes from.
    ``flags``: ``ratchet``, ``tight``, ``varies``. ``results``, ``failed``: how many results the row
    folds and how many of them did not pass; ``bundles``: how many bundles contributed.
    """

    case: str
    output: str
    dtype: str
    backend: str
    needed: dict[str, float]
    declared: str
    declared_by_case: bool
    slack: dict[str, float]
    rule_slack: float | None
    slack_kind: str | None
    flags: tuple[str, ...]
    results: int
    failed: int
    bundles: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite numbers as ``"inf"``)."""
        return {
            "case": self.case, "output": self.output, "dtype": self.dtype, "backend": self.backend,
            "needed": to_jsonable({kind: _int_if_whole(kind, value) for kind, value in self.needed.items()}),
            "declared": self.declared, "declared_by_case": self.declared_by_case,
            "slack": to_jsonable(self.slack), "rule_slack": to_jsonable(self.rule_slack),
            "slack_kind": self.slack_kind, "flags": list(self.flags), "results": self.results,
            "failed": self.failed, "bundles": self.bundles,
        }


# -- needed ------------------------------------------------------------------------------------


def _measure(value: Any) -> float:
    """A ``min_passing`` value as a number: None (nothing passes) and NaN count as ``inf``."""
    if value is None:
        return _INF
    try:
        number = float(value)
    except (TypeError, ValueError):
        return _INF
    return _INF if math.isnan(number) else number


def _counts(result: Result, record: RunRecord) -> bool:
    """Whether ``result`` measured the case's own tolerance (see the module docstring)."""
    if not result.min_passing or result.status in _NOT_MEASURED or result.check in _FIXED_TOLERANCE_CHECKS:
        return False
    if result.output is not None and (result.output == "params" or result.output.startswith("param:")):
        return False
    if result.check == "roundtrip":
        variant = record.variants.get(result.variant)
        trip = variant.roundtrip if variant is not None else None
        if trip is None or trip.get("exact", True):
            return False
    return True


def _dtype_backend(result: Result, record: RunRecord) -> tuple[str, str]:
    variant = record.variants.get(result.variant)
    if variant is not None:
        return variant.dtype, variant.backend
    try:
        return parse_variant_id(result.variant)[3], "?"
    except CaseError:
        return "?", "?"


@dataclass
class _Group:
    needed: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))
    declared: list[str] = field(default_factory=list)
    declared_by_case: bool = False
    results: int = 0
    failed: int = 0
    bundles: set[int] = field(default_factory=set)


def needed(records: Sequence[RunRecord]) -> list[Row]:
    """One :class:`Row` per case, output, dtype and backend seen in the stored verdicts of ``records``."""
    groups: dict[tuple[str, str, str, str], _Group] = {}
    for index, record in enumerate(records):
        for result in record.verdicts:
            if not _counts(result, record):
                continue
            dtype, backend = _dtype_backend(result, record)
            output = result.output or ""
            group = groups.setdefault((result.case, output, dtype, backend), _Group())
            found = result.min_passing or {}
            for kind in KINDS:
                group.needed[kind] = max(group.needed[kind], _measure(found.get(kind)))
            variant = record.variants.get(result.variant)
            by_case = variant is not None and bool(variant.tolerances.get(output))
            in_force = result.tolerance or (variant.tolerances.get(output) if variant is not None else None)
            try:
                text = str(Tolerance.coerce(in_force, dtype))
            except (ToleranceError, ValueError):
                text = str(in_force or "?")
            if not group.declared or group.declared[-1] != text:
                group.declared.append(text)
            group.declared_by_case = by_case
            group.results += 1
            group.failed += result.status in _FAILED
            group.bundles.add(index)
    return [_row(key, group) for key, group in sorted(groups.items())]


def _row(key: tuple[str, str, str, str], group: _Group) -> Row:
    case, output, dtype, backend = key
    need = {kind: _int_if_whole(kind, value) for kind, value in group.needed.items()}
    declared_text = group.declared[-1]
    flags: list[str] = []
    slack: dict[str, float] = {}
    rule_slack: float | None = None
    slack_kind: str | None = None
    try:
        declared = Tolerance.parse(declared_text)
    except ToleranceError:
        declared = None
    if declared is not None:
        slack = _kind_slack(declared.rule, need)
        rule_slack, slack_kind = _rule_slack(declared.rule, need)
    if rule_slack is not None and rule_slack > RATCHET:
        flags.append("ratchet")
    exact_slack = declared is not None and isinstance(declared.rule, (Ulp, Scaled, Exact))
    if group.failed or (exact_slack and rule_slack is not None and rule_slack < 1):
        flags.append("tight")
    if len(set(group.declared)) > 1:
        flags.append("varies")
    return Row(case=case, output=output, dtype=dtype, backend=backend, needed=need, declared=declared_text,
               declared_by_case=group.declared_by_case, slack=slack, rule_slack=rule_slack, slack_kind=slack_kind,
               flags=tuple(flags), results=group.results, failed=group.failed, bundles=len(group.bundles))


def _int_if_whole(kind: str, value: float) -> float:
    return int(value) if kind == "ulp" and math.isfinite(value) else value


def _ratio(budget: float, need: float) -> float:
    if need == 0:
        return 1.0 if budget == 0 else _INF
    if math.isinf(need):
        return 0.0
    return budget / need


def _leaf_slacks(rule: Rule, need: Mapping[str, float]) -> list[tuple[str, float]]:
    """(kind, slack) for each number of a leaf rule."""
    if isinstance(rule, Ulp):
        return [("ulp", _ratio(rule.budget, need["ulp"]))]
    if isinstance(rule, Scaled):
        return [("scaled", _ratio(rule.factor, need["scaled"]))]
    if isinstance(rule, Close):
        return [("rtol", _ratio(rule.rtol, need["rtol"])), ("atol", _ratio(rule.atol, need["atol"]))]
    return []


def _kind_slack(rule: Rule, need: Mapping[str, float]) -> dict[str, float]:
    """Per kind the rule has, the slack of its loosest term of that kind."""
    slack: dict[str, float] = {}
    for leaf in rule.leaves():
        for kind, value in _leaf_slacks(leaf, need):
            slack[kind] = max(slack.get(kind, 0.0), value)
    return {kind: slack[kind] for kind in KINDS if kind in slack}


def _rule_slack(rule: Rule, need: Mapping[str, float]) -> tuple[float, str]:
    """The slack of a whole rule and the kind of the term it comes from (module docstring)."""
    if isinstance(rule, AnyOf):
        return max((_rule_slack(r, need) for r in rule.rules), key=lambda s: s[0])
    if isinstance(rule, AllOf):
        return min((_rule_slack(r, need) for r in rule.rules), key=lambda s: s[0])
    if isinstance(rule, Exact):
        return (1.0 if need["ulp"] == 0 else 0.0), "exact"
    slacks = _leaf_slacks(rule, need)
    if not slacks:
        return 0.0, "?"
    kind, value = max(slacks, key=lambda s: s[1])
    return value, ("close" if isinstance(rule, Close) else kind)


# -- suggestions ---------------------------------------------------------------------------------


class Suggestions(dict[str, dict[str, str]]):
    """``{case_id: {output or dtype: tolerance text}}``, what ``case(tolerance=...)`` accepts per case.

    ``looser``: the entries whose suggestion would have been looser than the declared tolerance (or
    that no tolerance passes), each ``{"case", "key", "declared", "suggested", "reason"}``; the
    mapping holds the declared text for those. ``margin``: the factor the needs were multiplied by.
    """

    def __init__(self, entries: Mapping[str, dict[str, str]] | None = None, *,
                 looser: Iterable[Mapping[str, Any]] = (), margin: float = 2.0) -> None:
        super().__init__(entries or {})
        self.looser: list[dict[str, Any]] = [dict(item) for item in looser]
        self.margin = margin


@dataclass(frozen=True)
class _Proposal:
    rule: Rule | None  # None: nothing of the declared kind passes (an infinite need)
    looser: bool


def _budget(value: float) -> float:
    """A suggested number: rounded up to two significant digits, after float noise in the twelfth
    digit is dropped (2 x 1e-8 is ``2e-8``, not ``2.1e-8``)."""
    if value == 0 or not math.isfinite(value):
        return value
    decimal = Decimal(f"{value:.12g}")  # the decimal the float stands for, not its binary expansion
    quantum = Decimal(1).scaleb(decimal.adjusted() - 1)
    rounded = float(decimal.quantize(quantum, rounding=ROUND_CEILING))
    return rounded if rounded >= value else round_up(value)  # never below the need itself


def _propose(rule: Rule, need: Mapping[str, float], margin: float) -> _Proposal:
    """needed x margin in the shape of ``rule``; ``looser`` when it exceeds one of rule's numbers."""
    if isinstance(rule, AnyOf):
        ranked = sorted(rule.rules, key=lambda r: -_rule_slack(r, need)[0])  # stable: ties keep their order
        proposals = [_propose(r, need, margin) for r in ranked]
        usable = [p for p in proposals if p.rule is not None and not p.looser]
        return usable[0] if usable else next((p for p in proposals if p.rule is not None), proposals[0])
    if isinstance(rule, AllOf):
        parts = [_propose(r, need, margin) for r in rule.rules]
        if any(p.rule is None for p in parts):
            return _Proposal(None, True)
        return _Proposal(all_of([p.rule for p in parts if p.rule is not None]), any(p.looser for p in parts))
    if isinstance(rule, (Exact, Ulp)):
        if not math.isfinite(need["ulp"]):
            return _Proposal(None, True)
        budget = math.ceil(need["ulp"] * margin)
        if isinstance(rule, Exact):
            return _Proposal(Exact(), False) if budget == 0 else _Proposal(Ulp(budget), True)
        return _Proposal(Ulp(budget), budget > rule.budget)
    if isinstance(rule, Scaled):
        if not math.isfinite(need["scaled"]):
            return _Proposal(None, True)
        factor = _budget(need["scaled"] * margin)
        return _Proposal(Scaled(factor), factor > rule.factor)
    if isinstance(rule, Close):
        options: list[Close] = []
        if math.isfinite(need["rtol"]):
            options.append(Close(_budget(need["rtol"] * margin), 0.0))
        if math.isfinite(need["atol"]):
            options.append(Close(0.0, _budget(need["atol"] * margin)))
        if not options:
            return _Proposal(None, True)
        for option in options:
            if option.rtol <= rule.rtol and option.atol <= rule.atol:
                return _Proposal(option, False)
        return _Proposal(options[0], True)
    return _Proposal(None, True)


@dataclass
class _Entry:
    """One (case, output, dtype) with the needs of every backend folded in."""

    need: dict[str, float]
    declared: str


def _entry_text(entry: _Entry, margin: float) -> tuple[str, str | None, str | None]:
    """(text to write, the looser suggestion or None, why it was not written)."""
    try:
        declared = Tolerance.parse(entry.declared)
    except ToleranceError:
        return entry.declared, None, "the declared tolerance does not parse"
    proposal = _propose(declared.rule, entry.need, margin)
    if proposal.rule is None:
        return entry.declared, None, "no tolerance of the declared kind passes every result"
    text = str(Tolerance(proposal.rule, declared.fraction))
    if proposal.looser:
        return entry.declared, text, "needed x margin is looser than the declared tolerance"
    return text, None, None


def suggest(rows: Sequence[Row], margin: float = 2.0) -> Suggestions:
    """Per case, the tolerance mapping to pass as ``case(tolerance=...)``: needed x ``margin``.

    Shape: :meth:`Case.tolerance_for` looks a mapping up by output name, then dtype, then
    ``"default"``, one level. An output whose entries agree at every dtype it was seen at is keyed
    by its name. Outputs that need different tolerances at different dtypes are keyed by dtype
    instead: a dtype key holds what every such output needs at that dtype (their needs folded
    together), and also applies to outputs the evidence never saw. Where outputs sharing a dtype
    key declare different tolerances, those outputs are keyed by name after all, with the need of
    their worst dtype. Rows of several backends for one output and dtype are folded together.

    Each text keeps the kind of the declared rule (``ulp`` stays ``ulp``; ``close(rtol, atol)``
    becomes ``close(r, 0)`` or, where that would loosen the declared rtol, ``close(0, a)``; the
    loosest alternative of ``a | b``; every part of ``a & b``) and its fraction. ``ulp`` budgets are
    rounded up to whole ULPs, other numbers up to two significant digits. An entry looser than a
    declaration it replaces keeps the declared text and is listed in :attr:`Suggestions.looser`.
    """
    if not math.isfinite(margin) or margin < 1:
        raise ValueError(f"margin must be a finite number >= 1, got {margin!r}")
    entries: dict[str, dict[str, dict[str, _Entry]]] = {}
    for row in rows:
        by_dtype = entries.setdefault(row.case, {}).setdefault(row.output, {})
        entry = by_dtype.get(row.dtype)
        if entry is None:
            by_dtype[row.dtype] = _Entry(dict(row.needed), row.declared)
        else:
            entry.need = {kind: max(entry.need[kind], row.needed[kind]) for kind in KINDS}
            entry.declared = row.declared
    result = Suggestions(margin=margin)
    for case_id, outputs in sorted(entries.items()):
        keyed: dict[str, list[_Entry]] = {}  # mapping key -> the entries it must cover
        per_dtype: dict[str, dict[str, _Entry]] = {}  # dtype -> output -> entry
        for output, by_dtype in sorted(outputs.items()):
            if len({_entry_text(entry, margin)[0] for entry in by_dtype.values()}) == 1:
                keyed[output] = list(by_dtype.values())
            else:
                for dtype, entry in by_dtype.items():
                    per_dtype.setdefault(dtype, {})[output] = entry
        if all(len({e.declared for e in group.values()}) == 1 for group in per_dtype.values()):
            keyed.update((dtype, list(group.values())) for dtype, group in sorted(per_dtype.items()))
        else:
            for dtype_group in per_dtype.values():
                for output, entry in dtype_group.items():
                    keyed.setdefault(output, []).append(entry)
        mapping: dict[str, str] = {}
        for key, covered in keyed.items():
            text, looser, why, declared = _shared_text(covered, margin)
            mapping[key] = text
            if why is not None:
                result.looser.append({"case": case_id, "key": key, "declared": declared, "suggested": looser,
                                      "reason": why})
        result[case_id] = mapping
    return result


def _shared_text(covered: Sequence[_Entry], margin: float) -> tuple[str, str | None, str | None, str]:
    """One mapping entry for the outputs and dtypes in ``covered``: their needs folded, no looser
    than any of their declarations. Returns (text, the looser suggestion not written, why, the
    declared text kept)."""
    need = {kind: max(entry.need[kind] for entry in covered) for kind in KINDS}
    declared_texts = list(dict.fromkeys(entry.declared for entry in covered))
    attempts = [_entry_text(_Entry(need, declared), margin) for declared in declared_texts]
    for text, _, why in attempts:
        if why is None and all(_not_looser(text, other) for other in declared_texts):
            return text, None, None, text
    # Keep a declaration: the tightest one, so that none of the others is loosened.
    kept = next((d for d in declared_texts if all(_not_looser(d, other) for other in declared_texts)),
                declared_texts[0])
    _, looser, why = attempts[0]
    if why is None:  # fits its own declaration, looser than another's
        looser, why = attempts[0][0], "looser than another declared tolerance this entry covers"
    elif looser is None and len(declared_texts) > 1:
        looser = next((t for t, _, w in attempts if w is None), None)
    return kept, looser, why, kept


def _not_looser(text: str, declared_text: str) -> bool:
    """Whether the suggestion ``text`` passes nothing ``declared_text`` fails, as far as the rules'
    shapes tell (:func:`_within`); anything undecided counts as looser, to be safe."""
    try:
        suggestion, declared = Tolerance.parse(text), Tolerance.parse(declared_text)
    except ToleranceError:
        return False
    return suggestion.fraction <= declared.fraction and _within(suggestion.rule, declared.rule)


def _within(mine: Rule, theirs: Rule) -> bool:
    """Whether every element ``mine`` passes, ``theirs`` passes too (a sufficient test)."""
    if mine == theirs or isinstance(mine, Exact):
        return True
    if isinstance(mine, AnyOf):
        return all(_within(rule, theirs) for rule in mine.rules)
    if isinstance(theirs, AllOf):
        return all(_within(mine, rule) for rule in theirs.rules)
    if isinstance(mine, AllOf):
        return any(_within(rule, theirs) for rule in mine.rules)
    if isinstance(theirs, AnyOf):
        return any(_within(mine, rule) for rule in theirs.rules)
    if isinstance(mine, Ulp) and isinstance(theirs, Ulp):
        return mine.budget <= theirs.budget
    if isinstance(mine, Scaled) and isinstance(theirs, Scaled):
        return mine.factor <= theirs.factor
    if isinstance(mine, Close) and isinstance(theirs, Close):
        return mine.rtol <= theirs.rtol and mine.atol <= theirs.atol
    return False


# -- the file ------------------------------------------------------------------------------------

_NOTE = ("Tolerances derived from evidence by `detharness tolerances --write`: the smallest tolerance that "
         "passed every result seen, times the margin. Load one case's mapping with "
         "case(..., tolerance=detharness.tolerances.from_file(PATH, CASE_ID)). Entries listed under "
         "#looser_than_declared keep the case's declared tolerance: a suggestion never loosens one.")


def write(path: str | Path, suggestions: Mapping[str, Mapping[str, str]]) -> Path:
    """Write ``suggestions`` as JSON, atomically: ``{case_id: {output or dtype: tolerance text}}``
    plus ``"#note"``, ``"#margin"`` and ``"#looser_than_declared"`` (keys starting with ``#``, which
    no case id can, so they never collide with a case)."""
    data: dict[str, Any] = {"#note": _NOTE}
    if isinstance(suggestions, Suggestions):
        data["#margin"] = suggestions.margin
        data["#looser_than_declared"] = suggestions.looser
    else:
        data["#looser_than_declared"] = []
    for case_id in sorted(suggestions):
        data[case_id] = {key: str(text) for key, text in suggestions[case_id].items()}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, json_dumps(data, indent=2) + "\n")
    return target


def from_file(path: str | Path, case: str) -> dict[str, str]:
    """The tolerance mapping a file written by :func:`write` holds for ``case``, for
    ``case("my/case", tolerance=from_file("tolerances.json", "my/case"))``.

    A relative ``path`` is read from the folder of the file that calls (the case file), as
    :func:`detharness.cases.include` does. Any problem (no file, not JSON, no entry for the case, a
    text that is not a tolerance) is a :class:`~detharness.errors.CaseError` naming the file and case.
    Outputs the file has no entry for get the dtype's default, as with any mapping; add a
    ``"default"`` to cover them: ``{**from_file(...), "default": "ulp(4)"}``.
    """
    caller = sys._getframe(1).f_code.co_filename
    target = Path(path).expanduser()
    if not target.is_absolute():
        base = Path.cwd() if caller.startswith("<") else Path(caller).resolve().parent
        target = base / target
    where = f"from_file({str(path)!r}, {case!r})"
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CaseError(terminal_safe(f"{where}: cannot read {target}: {exc.strerror or exc}")) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise CaseError(terminal_safe(f"{where}: {target} is not a tolerances JSON file: {exc}")) from None
    if not isinstance(data, dict):
        raise CaseError(terminal_safe(f"{where}: {target} holds no mapping of case ids"))
    if case not in data or case.startswith("#"):
        cases = sorted(key for key in data if not key.startswith("#"))
        shown = ", ".join(cases[:10]) + (f" (+{len(cases) - 10} more)" if len(cases) > 10 else "")
        raise CaseError(terminal_safe(f"{where}: {target} has no entry for case {case!r}; "
                                      f"it has: {shown or 'no cases'}"))
    entry = data[case]
    if not isinstance(entry, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in entry.items()):
        raise CaseError(terminal_safe(f"{where}: {target}: the entry for {case!r} must map output or dtype names "
                                      "to tolerance texts"))
    bad = next(((key, problem) for key, text in entry.items() if (problem := _parse_problem(text))), None)
    if bad is not None:
        raise CaseError(terminal_safe(f"{where}: {target}: {bad[0]!r}: {bad[1]}"))
    return dict(entry)


def _parse_problem(text: str) -> str | None:
    try:
        Tolerance.parse(text)
    except ToleranceError as exc:
        return str(exc)
    return None


# -- tables --------------------------------------------------------------------------------------

_HEADERS = ["case", "output", "dtype", "backend", "declared", "needed ulp", "needed rtol", "needed atol",
            "needed scaled", "slack", "flags", "results"]


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e15):
        return str(int(value))
    return f"{value:.3g}"


def _slack_text(row: Row) -> str:
    if row.rule_slack is None:
        return "-"
    return f"{_number(row.rule_slack)}x ({row.slack_kind})"


def _declared_text(row: Row) -> str:
    return row.declared if row.declared_by_case else f"{row.declared} (default)"


def _cells(row: Row, suggestion: tuple[str, str | None, str | None] | None) -> list[str]:
    cells = [row.case, row.output, row.dtype, row.backend, _declared_text(row),
             *(_number(row.needed[kind]) for kind in KINDS), _slack_text(row), ", ".join(row.flags),
             f"{row.results - row.failed}/{row.results} passed"]
    if suggestion is not None:
        text, looser, why = suggestion
        if why is None:
            cells.append(text)
        elif looser is not None:
            cells.append(f"{looser} is looser: keeps {text}")
        else:
            cells.append(f"none passes: keeps {text}")
    return cells


def _row_suggestions(rows: Sequence[Row], margin: float) -> list[tuple[str, str | None, str | None]]:
    """Per row: (the text --write would keep, the looser suggestion it did not write, why)."""
    return [_entry_text(_Entry(dict(row.needed), row.declared), margin) for row in rows]


def render(rows: Sequence[Row], fmt: str = "text", margin: float | None = None) -> str:
    """The rows as a ``text`` table (tabulate ``simple``), ``md`` (GitHub) or ``json`` (a list of
    :meth:`Row.to_json` dicts). With ``margin``, a ``suggested`` column: each row's needed x margin
    in the declared kind, marked where it would be looser than the declaration."""
    if fmt not in ("text", "md", "json"):
        raise ValueError(f"unknown format {fmt!r}; choose text, md or json")
    if margin is not None and (not math.isfinite(margin) or margin < 1):
        raise ValueError(f"margin must be a finite number >= 1, got {margin!r}")
    suggestions = _row_suggestions(rows, margin) if margin is not None else None
    if fmt == "json":
        items = [row.to_json() for row in rows]
        if suggestions is not None:
            for item, (text, looser, why) in zip(items, suggestions, strict=True):
                item["suggested"], item["looser_than_declared"], item["suggestion_note"] = text, looser, why
        return json_dumps(items, indent=2)
    if not rows:
        return "No result in these bundles measured a tolerance (min_passing): nothing to derive."
    headers = _HEADERS + (["suggested"] if suggestions is not None else [])
    table = [_cells(row, suggestions[i] if suggestions is not None else None) for i, row in enumerate(rows)]
    if fmt == "text":
        body = [[terminal_safe(cell) for cell in cells] for cells in table]
        return str(tabulate(body, headers=headers, tablefmt="simple", disable_numparse=True))
    from detharness.report._escape import md_code, md_text

    code_columns = {4} | ({len(_HEADERS)} if suggestions is not None else set())
    body = [[md_code(cell) if i in code_columns and cell else md_text(cell) for i, cell in enumerate(cells)]
            for cells in table]
    return str(tabulate(body, headers=headers, tablefmt="github", disable_numparse=True))


def main_table(records: Sequence[RunRecord], margin: float = 2.0, fmt: str = "text",
               rows: Sequence[Row] | None = None) -> str:
    """What ``detharness tolerances BUNDLE...`` prints: :func:`render` of :func:`needed` (or the
    ``rows`` the caller already has), with the suggested column for ``margin``, and for text and
    markdown a line counting the flags."""
    rows = needed(records) if rows is None else rows
    table = render(rows, fmt, margin=margin)
    if fmt == "json" or not rows:
        return table
    ratchet = sum("ratchet" in row.flags for row in rows)
    tight = sum("tight" in row.flags for row in rows)
    summary = (f"{len(rows)} row{'s' if len(rows) != 1 else ''} from {len(records)} bundle{'s' if len(records) != 1 else ''}: "
               f"{ratchet} ratchet candidate{'s' if ratchet != 1 else ''} (declared over {format_number(RATCHET)}x "
               f"looser than needed), {tight} tight (a result needed more than declared)")
    return f"{table}\n\n{summary}"
