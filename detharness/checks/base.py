"""The check protocol and the pieces every check shares.

A check is one kind of comparison. It answers three questions, and the runner, the CLI and the
pytest plugin derive everything from those answers instead of keeping lists of their own:

- :meth:`Check.applies`: does this check judge this declared variant (given what was asked)?
- :meth:`Check.needs`: which other variants must run for it (a reference, a CPU twin)?
- :meth:`Check.judge`: turn recorded variants into :class:`~detharness.results.Result` objects.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from detharness.cases import shell_path, variant_id
from detharness.compare import Status, Verdict
from detharness.dtypes import FLOAT_DTYPES
from detharness.results import COVERABLE, FIELDS, Outcome, Result

if TYPE_CHECKING:
    from detharness.cases import Variant
    from detharness.checks.measures import Oracle
    from detharness.record import CaseRecord, RunRecord, VariantRecord


@dataclass(frozen=True)
class Plan:
    """What the user asked for that changes which checks apply."""

    #: Runs repeated (``--repeat N`` or ``--repeat-processes N`` with N > 1): the repeat check applies.
    repeating: bool = False
    #: A baseline bundle to hold every variant against: the environment check applies.
    baseline: RunRecord | None = None


class Check(Protocol):
    #: The name ``--check`` and the results use.
    name: ClassVar[str]
    #: Whether ``detharness run`` runs it (the environment check needs a second bundle).
    in_run: ClassVar[bool]

    def applies(self, v: Variant, plan: Plan) -> bool:
        """Whether this check judges variant ``v``."""
        ...

    def needs(self, v: Variant) -> list[Variant]:
        """Other variants that must run for ``v`` to be judged."""
        ...

    def judge(self, record: RunRecord, only: Iterable[str] | None = None,
              baseline: RunRecord | None = None) -> list[Result]:
        """Results for the variants of ``record`` (only those in ``only``, if given)."""
        ...


# -- shared helpers ----------------------------------------------------------------------------


def new_result(check: str, case: str, variant: str, status: Status | str, message: str, **fields: Any) -> Result:
    return Result(check=check, case=case, variant=variant, status=Status(status), message=message, **fields)


def tolerance_map(v: VariantRecord) -> dict[str, str] | None:
    chosen = {name: tol for name, tol in v.tolerances.items() if tol}
    return chosen or None


def verdict_results(check: str, case: str, variant: str, verdict: Verdict, *, baseline: str | None,
                    candidate: str | None, reproduce: str | None,
                    env_diff: Mapping[str, Any] | None = None) -> list[Result]:
    """One result per output of a (possibly multi-output) verdict."""
    per_output = verdict.outputs or {verdict.output or "y": verdict}
    results = []
    own = {"check", "case", "variant", "output", "baseline", "candidate", "status", "message", "env_diff",
           "reproduce", "underlying_status"}
    for name, v in per_output.items():
        stats = {k: value for k, value in v.to_json().items() if k in FIELDS and k not in own}
        results.append(Result(check=check, case=case, variant=variant, status=v.status, message=v.message,
                              output=name, baseline=baseline, candidate=candidate, env_diff=dict(env_diff or {}),
                              reproduce=None if v.status.passed else reproduce, **stats))
    return results


def judged(check: str, case_id: str, case: CaseRecord | None, variant: str, verdict: Verdict,
           expected: Mapping[str, Any],
           actual: Mapping[str, Any], *, baseline: str | None, candidate: str | None, reproduce: str | None,
           environment: Mapping[str, Any], env_diff: Mapping[str, Any] | None = None,
           oracle: Oracle | None = None, references: dict[int, Any] | None = None) -> list[Result]:
    """The results of a verdict between ``expected`` and ``actual``, with what the arrays say
    beyond it (decisions, shift, accuracy: :mod:`detharness.checks.measures`), then the case's
    known divergences applied (a declaration can cover a ``flipped`` result too)."""
    from detharness.checks.measures import annotate

    results = [apply_known(annotate(result, case, expected, actual, oracle=oracle, reproduce=reproduce,
                                    references=references),
                           case, environment)
               for result in verdict_results(check, case_id, variant, verdict, baseline=baseline,
                                             candidate=candidate, reproduce=reproduce, env_diff=env_diff)]
    # A decision declared for an output the variant does not have would never be judged: say so.
    unknown = sorted(set(case.decisions) - set(actual)) if case is not None and actual else []
    if unknown and results:
        results[0] = results[0].replace(message=f"{results[0].message}\n  decisions declared for outputs this "
                                                f"variant does not have: {', '.join(map(repr, unknown))}")
    return results


def float64_reference(record: RunRecord, case: CaseRecord | None) -> VariantRecord | None:
    """The case's float64 variant of its reference implementation on the CPU, whatever the order of
    the reference's dtypes, where it ran; None otherwise."""
    if case is None or case.reference_variant is None:
        return None
    ref = record.variants.get(case.reference_variant)
    if ref is None:
        return None
    if ref.dtype != "float64":
        ref = record.variants.get(variant_id(case.id, ref.impl, ref.device, "float64", ref.mode))
    return ref if ref is not None and ref.status == Outcome.OK else None


def oracle_for(record: RunRecord, case: CaseRecord | None, dtype: str, *, baseline: Mapping[str, Any] | None,
               baseline_name: str) -> Oracle | None:
    """The case's float64 reference in ``record`` as the oracle of a comparison whose baseline side
    gave ``baseline``; None where the case has no float64 reference that ran."""
    from detharness.checks.measures import Oracle

    ref = float64_reference(record, case)
    if ref is None or dtype not in FLOAT_DTYPES:
        return None
    return Oracle(ref.id, ref.outputs, baseline, baseline_name)


def apply_known(result: Result, case: CaseRecord | None, environment: Mapping[str, Any]) -> Result:
    """A failing result covered by a declared known divergence becomes ``known``; a passing one
    that a declared divergence covers is flagged stale."""
    if case is None:
        return result
    known = case.known_for(result.variant, result.check, environment, result.baseline)
    if known is None:
        return _not_covered(result, case, environment)
    if result.status in COVERABLE:
        return result.replace(status=Status.KNOWN, underlying_status=result.status, known_reason=known.reason,
                              message=f"known divergence ({known.reason}); underlying: {result.status}\n"
                                      f"{result.message}")
    if result.status.passed:
        return result.replace(stale_known=known.reason,
                              message=f"declared known divergence no longer happens (stale): {known.reason}")
    return result


def _not_covered(result: Result, case: CaseRecord, environment: Mapping[str, Any]) -> Result:
    """A failing result no declaration covers, in a case that declares some: say first which
    declaration came closest and which of its conditions does not hold here."""
    if result.status not in COVERABLE or not case.known:
        return result
    unmet = [(found, index, k) for index, k in enumerate(case.known)
             if (found := k.unmet(result.variant, result.check, environment, result.baseline)) is not None]
    if not unmet:
        return result
    (_held, why), _index, closest = max(unmet, key=lambda u: (u[0][0], -u[1]))
    line = f"declared known divergence {closest.reason!r} does not apply here: {why}"
    others = len(unmet) - 1
    if others:
        line += f" ({others} other declaration{'s do' if others > 1 else ' does'} not apply either)"
    return result.replace(message=f"{line}\n{result.message}")


def not_ok(check: str, v: VariantRecord, baseline: str | None, reproduce: str | None,
           candidate: str | None = None) -> Result:
    """The result for a variant that did not run: ``skipped`` with its reason, or ``error`` with its traceback."""
    if v.status == Outcome.SKIPPED:
        return new_result(check, v.case, v.id, Status.SKIPPED, v.error or "skipped", baseline=baseline,
                          candidate=candidate or v.id)
    return new_result(check, v.case, v.id, Status.ERROR, v.error or "error", baseline=baseline,
                      candidate=candidate or v.id, reproduce=reproduce, traceback=v.traceback)


def reference_failed(check: str, candidate: VariantRecord, ref: VariantRecord, reproduce: str | None) -> Result:
    """A comparison against a reference (or a CPU twin) that did not run."""
    if ref.status == Outcome.SKIPPED:
        return new_result(check, candidate.case, candidate.id, Status.SKIPPED,
                          f"reference {ref.id} did not run: {ref.error}", baseline=ref.id, candidate=candidate.id)
    return new_result(check, candidate.case, candidate.id, Status.ERROR, f"reference {ref.id} failed: {ref.error}",
                      baseline=ref.id, candidate=candidate.id, reproduce=reproduce, traceback=ref.traceback)


def selected(record: RunRecord, only: Iterable[str] | None) -> list[VariantRecord]:
    if only is None:
        return list(record.variants.values())
    return [record.variants[i] for i in only if i in record.variants]


def case_kind(record: RunRecord, v: VariantRecord) -> str:
    case = record.cases.get(v.case)
    return case.kind if case is not None else "compute"


def case_options(record: RunRecord) -> list[str]:
    """``--cases PATH`` for each case path a run was given, as shell words (``"$HOME"/...`` for a
    path under the home folder: a shell does not expand a quoted ``'~/...'``)."""
    words: list[str] = []
    for path in record.options.get("cases") or []:
        words += ["--cases", shell_path(str(path))]
    return words


def reproduce_run(record: RunRecord, variant: str, check: str | None) -> str:
    """The command line that runs this one variant's check (or, for ``None``, the variant) again in
    this environment; it runs when pasted into a shell, from any folder where the case paths mean
    what they meant."""
    opts = record.options
    words = ["detharness", "run", *case_options(record), "-k", shlex.quote(variant)]
    if check is not None:
        words += ["--check", check]
    if check == "repeat":
        processes = int(opts.get("repeat_processes") or 1)
        if processes > 1:
            words += ["--repeat-processes", str(processes)]
        if processes == 1 or int(opts.get("repeat") or 1) > 1:
            words += ["--repeat", str(max(2, int(opts.get("repeat") or 2)))]
    if opts.get("deterministic"):
        words.append("--deterministic")
    if opts.get("inputs_from"):
        words += ["--inputs-from", shell_path(str(opts["inputs_from"]))]
    return " ".join(words)
