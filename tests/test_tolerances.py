"""Tolerances derived from evidence: needed(), suggest(), write(), from_file(), render()."""

from __future__ import annotations

import io
import json
import math
import textwrap
from pathlib import Path
from typing import Any

import pytest

from detharness.cases import Case
from detharness.cli import main
from detharness.compare import Status
from detharness.compare.tolerance import Tolerance
from detharness.errors import CaseError
from detharness.record import RunRecord, VariantRecord, load
from detharness.results import Outcome, Result
from detharness.tolerances import Row, Suggestions, from_file, main_table, needed, render, suggest, write

# Three cases whose candidate moves every element K ULPs (K from the environment, so two runs
# stand for two environments): declared far too loose, snug, and a close() rule.
CASES = """
    import os

    import numpy as np

    from detharness import case
    {extra_import}

    def nudge(y):
        return (y.view(np.int32) + np.int32(int(os.environ.get("DH_TOL_K", "1")))).view(np.float32)

    def inputs(rng):
        return {{"x": (rng.random(64) + 0.5).astype("float32")}}

    for case_id, tolerance in (("t/loose", "ulp(64)"), ("t/snug", "ulp(8)"), ("t/close", "close(1e-4, 0)")):
        c = case(case_id, tolerance={tolerance}, inputs=inputs)

        @c.impl("ref", backend="numpy", reference=True, dtypes=("float32",))
        def _(x):
            return {{"y": x * np.float32(3)}}

        @c.impl("cand", backend="numpy", dtypes=("float32",))
        def _(x):
            return {{"y": nudge(x * np.float32(3))}}
"""


def _case_file(path: Path, tolerance: str = "tolerance", extra_import: str = "") -> Path:
    path.write_text(textwrap.dedent(CASES.format(tolerance=tolerance, extra_import=extra_import)))
    return path


def _run(monkeypatch: pytest.MonkeyPatch, cases: Path, bundle: Path, k: int) -> int:
    monkeypatch.setenv("DH_TOL_K", str(k))
    return main(["run", "--cases", str(cases), "--in-process", "--out", str(bundle)], out=io.StringIO())


def _by_case(rows: list[Row]) -> dict[str, Row]:
    return {row.case: row for row in rows}


def test_two_bundles_then_the_written_file_passes_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = _case_file(tmp_path / "cases.py")
    assert _run(monkeypatch, cases, tmp_path / "a", 2) == 0
    assert _run(monkeypatch, cases, tmp_path / "b", 5) == 0
    records = [load(tmp_path / "a"), load(tmp_path / "b")]

    rows = _by_case(needed(records))
    assert set(rows) == {"t/loose", "t/snug", "t/close"}
    loose, snug, close = rows["t/loose"], rows["t/snug"], rows["t/close"]
    # The max over both bundles: 5 ULPs (bundle b), not 2 (bundle a).
    assert (loose.output, loose.dtype, loose.backend) == ("y", "float32", "numpy")
    assert loose.needed["ulp"] == 5 and loose.results == 2 and loose.bundles == 2 and loose.failed == 0
    assert loose.declared == "ulp(64)" and loose.declared_by_case
    assert loose.slack == {"ulp": pytest.approx(64 / 5)} and loose.slack_kind == "ulp"
    assert loose.flags == ("ratchet",)  # 12.8x > 10x
    assert snug.slack == {"ulp": pytest.approx(8 / 5)} and snug.flags == ()
    # close(1e-4, 0) against an rtol of ~6e-7: the rtol numbers compared, far over 10x.
    assert close.slack["rtol"] == pytest.approx(1e-4 / close.needed["rtol"])
    assert close.slack["atol"] == 0 and close.slack_kind == "close" and close.flags == ("ratchet",)

    suggestions = suggest(list(rows.values()), margin=2.0)
    assert suggestions["t/loose"] == {"y": "ulp(10)"}
    # ulp(10) would loosen the declared ulp(8): the declared text stays, and the entry is marked.
    assert suggestions["t/snug"] == {"y": "ulp(8)"}
    assert suggestions.looser == [{"case": "t/snug", "key": "y", "declared": "ulp(8)", "suggested": "ulp(10)",
                                   "reason": "needed x margin is looser than the declared tolerance"}]
    close_text = suggestions["t/close"]["y"]
    assert Tolerance.parse(close_text) == Tolerance.close(float(close_text[6:].split(",")[0]), 0)
    _never_looser(suggestions, {"t/loose": "ulp(64)", "t/snug": "ulp(8)", "t/close": "close(1e-4, 0)"})

    tolerances = write(tmp_path / "tolerances.json", suggestions)
    stored = json.loads(tolerances.read_text())
    assert stored["t/loose"] == {"y": "ulp(10)"} and stored["#margin"] == 2.0
    assert stored["#looser_than_declared"][0]["key"] == "y"
    assert not list(tmp_path.glob(".tolerances.json.*"))  # the atomic write left no temp file

    # A case file that loads the file (relative to itself) passes both environments ...
    loading = _case_file(tmp_path / "loading.py", tolerance='from_file("tolerances.json", case_id)',
                         extra_import="from detharness.tolerances import from_file")
    assert _run(monkeypatch, loading, tmp_path / "a2", 2) == 0
    assert _run(monkeypatch, loading, tmp_path / "b2", 5) == 0
    in_force = {r.case: r.tolerance for r in load(tmp_path / "b2").verdicts}
    assert in_force == {"t/loose": "ulp(10)", "t/snug": "ulp(8)", "t/close": close_text}
    # ... and the ratcheted tolerance bites: 11 ULPs fail ulp(10), which the declared ulp(64) allowed.
    assert _run(monkeypatch, loading, tmp_path / "c2", 11) == 1


def test_a_result_that_needed_more_than_declared_is_tight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = _case_file(tmp_path / "cases.py")
    assert _run(monkeypatch, cases, tmp_path / "a", 2) == 0
    assert _run(monkeypatch, cases, tmp_path / "b", 12) == 1  # ulp(8) misses 12 ULPs
    rows = _by_case(needed([load(tmp_path / "a"), load(tmp_path / "b")]))
    snug = rows["t/snug"]
    assert snug.needed["ulp"] == 12 and snug.failed == 1 and snug.results == 2
    assert snug.rule_slack == pytest.approx(8 / 12) and snug.flags == ("tight",)
    assert rows["t/loose"].flags == ()  # 64 / 12 is under 10x
    suggestions = suggest(list(rows.values()))
    assert suggestions["t/snug"] == {"y": "ulp(8)"}  # never loosened by itself
    assert [item["suggested"] for item in suggestions.looser if item["case"] == "t/snug"] == ["ulp(24)"]
    text = main_table([load(tmp_path / "a"), load(tmp_path / "b")], 2.0, "text")
    assert "tight" in text and "ulp(24) is looser: keeps ulp(8)" in text and "1 tight" in text


# -- synthetic records ---------------------------------------------------------------------------


def _record(*results: tuple[Result, str, str, str | None]) -> RunRecord:
    """A record holding ``results``, each with its variant's (dtype, backend, declared tolerance)."""
    variants: dict[str, VariantRecord] = {}
    for result, dtype, backend, declared in results:
        case, _, rest = result.variant.partition("[")
        impl = rest.split(":")[0]
        variant = variants.setdefault(result.variant, VariantRecord(
            id=result.variant, case=case, impl=impl, backend=backend, device="cpu", dtype=dtype, mode="eager",
            status=Outcome.OK))
        variant.tolerances[result.output or "y"] = declared
    return RunRecord(environment={}, environment_id="e", variants=variants, verdicts=[r for r, *_ in results])


def _result(case: str, dtype: str, tolerance: str, min_passing: dict[str, Any] | None, *, output: str = "y",
            status: Status = Status.CLOSE, check: str = "backend", impl: str = "cand") -> Result:
    return Result(check=check, case=case, variant=f"{case}[{impl}:cpu:{dtype}:eager]", status=status, message="",
                  output=output, tolerance=tolerance, min_passing=min_passing)


def _mp(ulp: Any = 0, rtol: Any = 0.0, atol: Any = 0.0, scaled: Any = 0.0) -> dict[str, Any]:
    return {"ulp": ulp, "rtol": rtol, "atol": atol, "scaled": scaled}


def test_slack_of_each_kind_and_of_combined_rules() -> None:
    record = _record(
        (_result("k/close", "float32", "close(1e-5, 1e-6)", _mp(3, 2e-7, 5e-8, 1e-7)), "float32", "torch",
         "close(1e-5, 1e-6)"),
        (_result("k/scaled", "float32", "scaled(1e-6)", _mp(40, "inf", 1e-6, 4e-7)), "float32", "torch",
         "scaled(1e-6)"),
        (_result("k/any", "float32", "ulp(2) | scaled(1e-3)", _mp(6, 1e-6, 1e-6, 1e-6)), "float32", "jax",
         "ulp(2) | scaled(1e-3)"),
        (_result("k/all", "float32", "ulp(40) & scaled(5e-6)", _mp(2, 1e-6, 1e-6, 1e-6)), "float32", "jax",
         "ulp(40) & scaled(5e-6)"),
        (_result("k/exact", "int64", "exact", _mp(), status=Status.IDENTICAL), "int64", "numpy", None),
        (_result("k/default", "float32", "close(1.3e-6, 1e-5)", _mp(1, 1e-7, 1e-7, 1e-7)), "float32", "numpy",
         None),
    )
    rows = _by_case(needed([record]))
    close = rows["k/close"]
    assert close.slack == {"rtol": pytest.approx(50), "atol": pytest.approx(20)}
    assert close.rule_slack == pytest.approx(50) and close.slack_kind == "close" and close.flags == ("ratchet",)
    scaled = rows["k/scaled"]
    assert scaled.needed["rtol"] == math.inf and scaled.slack == {"scaled": pytest.approx(2.5)}
    assert scaled.flags == ()
    # ulp(2) alone is short of 6 ULPs, scaled(1e-3) is 1000x the need: the loosest alternative counts,
    # and it is a ratchet candidate, not a tight one (the result passed).
    any_row = rows["k/any"]
    assert any_row.slack == {"ulp": pytest.approx(1 / 3), "scaled": pytest.approx(1000)}
    assert any_row.rule_slack == pytest.approx(1000) and any_row.slack_kind == "scaled"
    assert any_row.flags == ("ratchet",) and any_row.backend == "jax"
    # Every part of a conjunction must hold: its tightest part is the slack.
    all_row = rows["k/all"]
    assert all_row.rule_slack == pytest.approx(5) and all_row.slack_kind == "scaled" and all_row.flags == ()
    assert rows["k/exact"].rule_slack == 1 and rows["k/exact"].flags == () and rows["k/exact"].dtype == "int64"
    default = rows["k/default"]
    assert not default.declared_by_case and default.declared == "close(1.3e-6, 1e-5)"

    suggestions = suggest(list(rows.values()), margin=2.0)
    assert suggestions["k/close"] == {"y": "close(4e-7, 0)"}
    # rtol is unmeasurable against exact zeros: scaled stays scaled.
    assert suggestions["k/scaled"] == {"y": "scaled(8e-7)"}
    assert suggestions["k/any"] == {"y": "scaled(2e-6)"}  # the kind of the loosest alternative
    assert suggestions["k/all"] == {"y": "ulp(4) & scaled(2e-6)"}
    assert suggestions["k/exact"] == {"y": "exact"}
    assert suggestions.looser == []


def test_declared_close_keeps_a_tighter_atol_only_form_when_rtol_alone_would_loosen() -> None:
    # rtol needed 1e-4 (values near zero) but atol 1e-8: close(2e-4, 0) would loosen close(1e-5, 1e-6).
    record = _record((_result("c/x", "float32", "close(1e-5, 1e-6)", _mp(900, 1e-4, 1e-8, 1e-8)), "float32",
                      "numpy", "close(1e-5, 1e-6)"))
    suggestions = suggest(needed([record]))
    assert suggestions["c/x"] == {"y": "close(0, 2e-8)"} and suggestions.looser == []


def test_checks_that_judge_with_exact_and_unmeasured_results_are_left_out() -> None:
    record = _record(
        (_result("s/x", "float32", "ulp(4)", _mp(2)), "float32", "numpy", "ulp(4)"),
        (_result("s/x", "float32", "exact", _mp(900), check="repeat"), "float32", "numpy", "ulp(4)"),
        (_result("s/x", "float32", "exact", _mp(900), check="rng"), "float32", "numpy", "ulp(4)"),
        (_result("s/x", "float32", "ulp(4)", _mp(900), check="roundtrip"), "float32", "numpy", "ulp(4)"),
        (_result("s/x", "float32", "ulp(4)", _mp(900), status=Status.SKIPPED, impl="skip"), "float32", "numpy",
         "ulp(4)"),
        (_result("s/x", "float32", "ulp(4)", _mp(900), status=Status.ERROR, impl="err"), "float32", "numpy",
         "ulp(4)"),
        (_result("s/x", "float32", "ulp(4)", None, status=Status.DIVERGED, impl="none"), "float32", "numpy",
         "ulp(4)"),
    )
    [row] = needed([record])
    assert row.needed["ulp"] == 2 and row.results == 1 and row.flags == ()


def test_known_and_mismatch_results_are_tight_and_nothing_is_loosened() -> None:
    record = _record(
        (_result("m/known", "float32", "ulp(4)", _mp(9), status=Status.KNOWN), "float32", "numpy", "ulp(4)"),
        (_result("m/nan", "float32", "ulp(4)", _mp(None, None, None, None), status=Status.MISMATCH), "float32",
         "numpy", "ulp(4)"),
    )
    rows = _by_case(needed([record]))
    assert rows["m/known"].flags == ("tight",) and rows["m/known"].failed == 1
    nan = rows["m/nan"]
    assert nan.needed == dict.fromkeys(("ulp", "rtol", "atol", "scaled"), math.inf)
    assert nan.rule_slack == 0 and nan.flags == ("tight",)
    suggestions = suggest(list(rows.values()))
    assert suggestions == {"m/known": {"y": "ulp(4)"}, "m/nan": {"y": "ulp(4)"}}
    assert {(item["case"], item["suggested"]) for item in suggestions.looser} == {("m/known", "ulp(18)"),
                                                                                  ("m/nan", None)}
    as_json = json.loads(render(list(rows.values()), "json", margin=2.0))
    assert as_json[1]["needed"]["ulp"] == "inf" and as_json[1]["suggestion_note"].startswith("no tolerance")


def test_an_output_with_different_needs_per_dtype_is_keyed_by_dtype() -> None:
    record = _record(
        (_result("d/x", "float32", "ulp(8)", _mp(3)), "float32", "torch", "ulp(8)"),
        (_result("d/x", "float16", "ulp(8)", _mp(1)), "float16", "torch", "ulp(8)"),
        (_result("d/x", "float32", "ulp(8)", _mp(1), output="z"), "float32", "torch", "ulp(8)"),
        (_result("d/x", "float16", "ulp(8)", _mp(1), output="z"), "float16", "torch", "ulp(8)"),
        # Another backend at float32: folded into the same entry (its need is the larger one).
        (_result("d/x", "float32", "ulp(8)", _mp(4), impl="jax"), "float32", "jax", "ulp(8)"),
    )
    rows = needed([record])
    assert [(r.output, r.dtype, r.backend) for r in rows] == [
        ("y", "float16", "torch"), ("y", "float32", "jax"), ("y", "float32", "torch"), ("z", "float16", "torch"),
        ("z", "float32", "torch")]
    suggestions = suggest(rows)
    assert suggestions == {"d/x": {"z": "ulp(2)", "float16": "ulp(2)", "float32": "ulp(8)"}}
    # What a case built with that mapping uses: the output's entry first, then the dtype's.
    built = Case("d/x", tolerance=suggestions["d/x"])
    assert built.tolerance_for("y", "float32") == "ulp(8)" and built.tolerance_for("y", "float16") == "ulp(2)"
    assert built.tolerance_for("z", "float32") == "ulp(2)"


def test_from_file_errors_name_the_file_and_the_case(tmp_path: Path) -> None:
    path = write(tmp_path / "tol.json", Suggestions({"a/b": {"y": "ulp(3)"}}))
    assert from_file(path, "a/b") == {"y": "ulp(3)"}
    with pytest.raises(CaseError, match=r"tol\.json has no entry for case 'c/d'; it has: a/b"):
        from_file(path, "c/d")
    with pytest.raises(CaseError, match=r"cannot read .*missing\.json"):
        from_file(tmp_path / "missing.json", "a/b")
    (tmp_path / "bad.json").write_text('{"a/b": {"y": "ulp(-1)"}}')
    with pytest.raises(CaseError, match=r"from_file\(.*'a/b'\).*bad\.json: 'y': cannot parse tolerance"):
        from_file(tmp_path / "bad.json", "a/b")
    (tmp_path / "notjson.json").write_text("{")
    with pytest.raises(CaseError, match="not a tolerances JSON file"):
        from_file(tmp_path / "notjson.json", "a/b")
    with pytest.raises(CaseError, match="no entry for case '#note'"):
        from_file(path, "#note")


def test_from_file_reads_a_relative_path_from_the_callers_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "tol.json", {"a/b": {"default": "ulp(1)"}})
    caller = tmp_path / "sub" / "caller.py"
    caller.write_text("from detharness.tolerances import from_file\nFOUND = from_file('tol.json', 'a/b')\n")
    namespace: dict[str, Any] = {}
    exec(compile(caller.read_text(), str(caller), "exec"), namespace)
    assert namespace["FOUND"] == {"default": "ulp(1)"}


def test_render_formats_and_escaping() -> None:
    record = _record((_result("r/x", "float32", "ulp(64)", _mp(2, 1e-7, 1e-7, 1e-7), output="a|b\x1b[31m"),
                      "float32", "numpy", "ulp(64)"))
    rows = needed([record])
    text = render(rows, "text")
    assert "\x1b" not in text and "\\x1b[31m" in text and "32x (ulp)" in text and "ratchet" in text
    md = render(rows, "md", margin=2.0)
    assert "a\\|b" in md and "`ulp(64)`" in md and "`ulp(4)`" in md and "\x1b" not in md
    assert json.loads(render(rows, "json"))[0]["slack"] == {"ulp": 32.0}
    assert render([], "text").startswith("No result")
    assert json.loads(render([], "json")) == []
    with pytest.raises(ValueError, match="unknown format"):
        render(rows, "html")
    with pytest.raises(ValueError, match="margin"):
        suggest(rows, margin=0.5)


def _never_looser(suggestions: Suggestions, declared: dict[str, str]) -> None:
    """Every written entry is no looser than the declared tolerance of the same kind."""
    for case_id, mapping in suggestions.items():
        base = Tolerance.parse(declared[case_id]).rule
        for text in mapping.values():
            rule = Tolerance.parse(text).rule
            assert type(rule) is type(base)
            for name in ("budget", "factor", "rtol", "atol"):
                if hasattr(rule, name):
                    assert getattr(rule, name) <= getattr(base, name)


def test_outputs_sharing_a_dtype_key_with_different_declarations_are_keyed_by_output() -> None:
    record = _record(
        (_result("o/x", "float32", "ulp(8)", _mp(3)), "float32", "torch", "ulp(8)"),
        (_result("o/x", "float16", "ulp(8)", _mp(1)), "float16", "torch", "ulp(8)"),
        (_result("o/x", "float32", "ulp(2)", _mp(1), output="z"), "float32", "torch", "ulp(2)"),
        (_result("o/x", "float16", "ulp(2)", _mp(0), output="z"), "float16", "torch", "ulp(2)"),
    )
    suggestions = suggest(needed([record]))
    # A float32 key would have to serve y (declared ulp(8)) and z (declared ulp(2)) at once.
    assert suggestions == {"o/x": {"y": "ulp(6)", "z": "ulp(2)"}} and suggestions.looser == []
