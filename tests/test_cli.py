"""End-to-end: the CLI as a user runs it, reading its output and exit code."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CRASHING_CASES, run_cli, write_cases

pytestmark = pytest.mark.slow


def test_help_and_list_import_no_framework() -> None:
    code = ("import sys; from detharness.cli import main; main(['list']); "
            "heavy = [m for m in ('torch', 'jax', 'onnxruntime', 'onnx') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_list_shows_variants_and_json(small_cases: Path) -> None:
    text = run_cli("list", "--cases", str(small_cases))
    assert text.returncode == 0, text.stderr
    assert "small/scale[torch:cpu:float16:eager]" in text.stdout
    assert "2 cases, 9 variants" in text.stdout
    listed = run_cli("list", "--cases", str(small_cases), "--json", "-k", "softmax")
    data = json.loads(listed.stdout)
    assert [c["id"] for c in data["cases"]] == ["small/softmax"]
    assert data["cases"][0]["variants"] == ["small/softmax[numpy:cpu:float64:eager]",
                                            "small/softmax[torch:cpu:float32:eager]", "small/softmax[torch:cuda:float32:eager]"]
    assert data["backends"]["torch"]["installed"] is True


def test_run_then_compare_with_itself_is_identical(small_cases: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "A"
    run = run_cli("run", "--cases", str(small_cases), "--out", str(bundle), "--format", "json",
                  "--report", str(tmp_path / "run.md"))
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    by_variant = {(r["check"], r["variant"]): r for r in report["results"]}
    assert by_variant[("backend", "small/scale[torch:cpu:float32:eager]")]["status"] in ("identical", "close")
    assert by_variant[("backend", "small/scale[torch:cuda:float32:eager]")]["status"] == "skipped"
    assert "no cuda device seen by torch" in by_variant[("backend", "small/scale[torch:cuda:float32:eager]")]["message"]
    assert (tmp_path / "run.md").read_text().startswith("## detharness run")
    assert (bundle / "manifest.json").exists()

    same = run_cli("compare", str(bundle), str(bundle), "--format", "json")
    assert same.returncode == 0, same.stderr
    compared = json.loads(same.stdout)
    statuses = {r["status"] for r in compared["results"]}
    assert statuses <= {"identical", "skipped"}
    assert compared["summary"]["identical"] == 6


def test_report_renders_stored_bundles_as_run_and_compare_did(small_cases: Path, tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    bundle = tmp_path / "A"
    run = run_cli("run", "--cases", str(small_cases), "--out", str(bundle), "--in-process", "--format", "json",
                  "--report", str(tmp_path / "run.html"), "--report", str(tmp_path / "run.xml"))
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)["summary"]
    # One bundle: its stored verdicts, as the run reported them; nothing reruns.
    one = run_cli("report", str(bundle), "--format", "json", "--report", str(tmp_path / "again.html"))
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["summary"] == summary
    page = (tmp_path / "again.html").read_text()
    assert page.count('<figure class="plot') > 0  # plots drawn from the bundle's arrays
    # The same page as the run wrote, but for the run's duration in the header.
    assert (tmp_path / "run.html").read_text().partition('<section id="verdict"')[2] == page.partition(
        '<section id="verdict"')[2]
    suites = ET.parse(tmp_path / "run.xml").getroot()
    assert int(suites.get("tests", -1)) == sum(summary.values())
    # Two bundles: what compare of them reports.
    two = run_cli("report", str(bundle), str(bundle), "--format", "json", "--report", str(tmp_path / "two.html"))
    assert two.returncode == 0, two.stderr
    assert json.loads(two.stdout)["summary"] == {"identical": 6, "skipped": summary["skipped"]}
    # Two renders of a compare are byte-identical too: no duration or time in the page.
    shutil.copy(tmp_path / "two.html", tmp_path / "two-first.html")
    assert run_cli("report", str(bundle), str(bundle), "--report", str(tmp_path / "two.html")).returncode == 0
    assert (tmp_path / "two.html").read_bytes() == (tmp_path / "two-first.html").read_bytes()
    # The text output leads with the summary and stays short; -v adds the table.
    brief, verbose = run_cli("report", str(bundle)), run_cli("report", str(bundle), "-v")
    assert brief.stdout.startswith("detharness run: ") and "status" not in brief.stdout.split()
    assert verbose.stdout.startswith(brief.stdout.splitlines()[0]) and len(verbose.stdout) > len(brief.stdout)
    # Two renders of one bundle are byte-identical.
    again = run_cli("report", str(bundle), "--report", str(tmp_path / "third.html"))
    assert again.returncode == 0 and (tmp_path / "third.html").read_bytes() == (tmp_path / "again.html").read_bytes()


def test_worker_crash_hang_and_exception_cost_one_variant_each(tmp_path: Path) -> None:
    cases = write_cases(tmp_path / "bad", CRASHING_CASES)
    # The timeout counts a variant's own call, not the worker's start: 1 s is ample for the others.
    run = run_cli("run", "--cases", str(cases), "--timeout", "1", "--device", "cpu", "--format", "json")
    assert run.returncode == 1
    results = {r["variant"]: r for r in json.loads(run.stdout)["results"]}
    assert results["bad/crash[segfault:cpu:float32:eager]"]["status"] == "error"
    assert results["bad/crash[segfault:cpu:float32:eager]"]["message"] == "worker crashed: killed by SIGSEGV"
    assert results["bad/crash[hang:cpu:float32:eager]"]["message"] == "timed out after 1 s"
    assert results["bad/crash[raises:cpu:float32:eager]"]["message"] == "ValueError: bad shape in the serving code"
    assert results["bad/crash[after:cpu:float32:eager]"]["status"] == "identical"
    assert results["bad/crash[raises:cpu:float32:eager]"]["reproduce"].startswith("detharness run --cases ")


def test_inputs_from_replays_the_baseline_inputs(small_cases: Path, tmp_path: Path) -> None:
    assert run_cli("run", "--cases", str(small_cases), "--backend", "numpy", "--out", str(tmp_path / "A")).returncode == 0
    replay = run_cli("run", "--cases", str(small_cases), "--backend", "numpy", "--inputs-from", str(tmp_path / "A"),
                     "--out", str(tmp_path / "B"))
    assert replay.returncode == 0, replay.stderr
    a = json.loads((tmp_path / "A" / "manifest.json").read_text())
    b = json.loads((tmp_path / "B" / "manifest.json").read_text())
    assert a["cases"]["small/scale"]["inputs"] == b["cases"]["small/scale"]["inputs"]
    assert b["options"]["inputs_from"] == str(tmp_path / "A")


def test_aten_cpu_capability_default_moves_softmax_and_layer_norm(tmp_path: Path) -> None:
    """A real cross-environment comparison: torch's vector kernels at two capability levels."""
    selection = ["-k", "(softmax or layer_norm) and torch and float32 and cpu and eager"]
    base = run_cli("run", *selection, "--out", str(tmp_path / "native"))
    assert base.returncode == 0, base.stdout + base.stderr
    cand = run_cli("run", *selection, "--out", str(tmp_path / "default"), env={"ATEN_CPU_CAPABILITY": "default"})
    assert cand.returncode == 0, cand.stdout + cand.stderr
    compared = run_cli("compare", str(tmp_path / "native"), str(tmp_path / "default"), "--format", "json",
                       "--fail-on", "diverged,mismatch,error,close")
    assert compared.returncode == 1
    results = {r["variant"]: r for r in json.loads(compared.stdout)["results"]}
    for variant in ("models/softmax[torch:cpu:float32:eager]", "models/layer_norm[torch:cpu:float32:eager]"):
        result = results[variant]
        assert result["status"] in ("close", "diverged"), result
        assert result["env_diff"]["env.ATEN_CPU_CAPABILITY"] == [None, "default"]
        assert result["env_diff"]["torch.cpu_capability"][1] == "DEFAULT"
        assert result["env_diff"]["torch.cpu_capability"][0] != "DEFAULT"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--backend", "tensorflow"], "detharness: error: unknown backend 'tensorflow'"),
        (["run", "--cases", "does/not/exist"], "detharness: error: --cases does/not/exist: no such file or directory"),
        (["run", "--repeat", "0"], "detharness: error: --repeat must be at least 1"),
        (["run", "--report", "out.pdf"],
         "detharness: error: --report out.pdf: unknown extension '.pdf'; use .md, .json, .txt, .html or .xml"),
        (["report", "no-such-bundle"], "detharness: error: "),
        (["report", "no-such-bundle", "-k", "x"], "detharness: error: "),
        (["run", "--fail-on", "bogus"], "detharness: error: --fail-on: unknown status 'bogus'"),
        (["compare", "no-such-bundle", "other"], "detharness: error: "),
        (["frobnicate"], "detharness: error: argument command: invalid choice"),
    ],
)
def test_bad_usage_exits_2_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(message)
    assert "Traceback" not in result.stderr


def test_case_file_that_raises_exits_2_naming_file_and_error(tmp_path: Path) -> None:
    bad = write_cases(tmp_path, "raise ImportError('pandas is not installed')\n", name="broken.py")
    result = run_cli("run", "--cases", str(bad), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr == f"detharness: error: case file {bad} failed to import (line 1): ImportError: pandas is not installed\n"
    assert not (tmp_path / "out").exists()


NAMED_INPUTS = """
    import numpy as np
    import warnings

    from detharness import case

    c = case("named/subtract", inputs=lambda rng: {"b": np.full(4, 3.0, "float32"), "a": np.full(4, 11.0, "float32")})

    @c.impl("training", backend="numpy", reference=True)
    def _(a, b):
        return {"y": a - b}

    @c.impl("serving", backend="numpy")
    def _(b, a):  # another order than the case's dict: inputs are matched by name
        print("serving says hello")
        warnings.warn("serving is deprecated", DeprecationWarning)
        return {"y": a - b}

    @c.impl("context", backend="numpy")
    def _(a, b, ctx):
        assert ctx.dtype == "float32" and ctx.device == "cpu", ctx
        return {"y": (a - b).astype(ctx.dtype)}

    r = case("named/raises", inputs=lambda rng: {"x": np.ones((2, 3), "float32")})

    @r.impl("ref", backend="numpy", reference=True)
    def _(x):
        return {"y": x * 2}

    @r.impl("broken", backend="numpy")
    def _(x):
        return {"y": x.reshape(5)}
"""


def test_inputs_bind_by_name_whatever_their_order(tmp_path: Path) -> None:
    cases = write_cases(tmp_path / "mine", NAMED_INPUTS)
    done = run_cli("run", "--cases", str(cases), "-k", "subtract", "--format", "json", "--out", str(tmp_path / "b"))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)  # a case's prints do not reach detharness's stdout
    statuses = {r["variant"]: r["status"] for r in data["results"]}
    assert statuses == {"named/subtract[serving:cpu:float32:eager]": "identical",
                        "named/subtract[context:cpu:float32:eager]": "identical"}
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    log = manifest["variants"]["named/subtract[serving:cpu:float32:eager]"]["log"]
    assert log["stdout"] == "serving says hello\n"
    assert any("DeprecationWarning: serving is deprecated" in w for w in log["warnings"])


@pytest.mark.parametrize(("signature", "named"), [
    ("def _(a):", "does not take b"),
    ("def _(a, b, c):", "takes c, which the case does not give"),
    ("def _(a, params):", "params (the case has no params=)"),
])
def test_a_missing_or_extra_parameter_fails_at_discovery(tmp_path: Path, signature: str, named: str) -> None:
    cases = write_cases(tmp_path / "mine", f"""
        import numpy as np
        from detharness import case

        c = case("named/bad", inputs=lambda rng: {{"a": np.ones(2), "b": np.ones(2)}})

        @c.impl("one", backend="numpy", reference=True)
        {signature}
            return {{"y": a}}
    """)
    done = run_cli("run", "--cases", str(cases), "--out", str(tmp_path / "b"))
    assert done.returncode == 2
    line = done.stderr.strip()
    assert "\n" not in line and named in line
    assert f"case named/bad: implementation 'one' ({cases}:7)" in line
    assert "the case's inputs are: a, b" in line
    assert not (tmp_path / "b").exists()


def test_an_input_may_not_take_a_reserved_name(tmp_path: Path) -> None:
    cases = write_cases(tmp_path / "mine", """
        import numpy as np
        from detharness import case

        c = case("named/reserved", inputs=lambda rng: {"ctx": np.ones(2)})

        @c.impl("one", backend="numpy", reference=True)
        def _(ctx):
            return {"y": ctx}
    """)
    done = run_cli("run", "--cases", str(cases))
    assert done.returncode == 2 and "no input may be called 'ctx'" in done.stderr


def test_a_failing_implementation_gives_one_error_with_its_traceback(tmp_path: Path) -> None:
    cases = write_cases(tmp_path / "mine", NAMED_INPUTS)
    done = run_cli("run", "--cases", str(cases), "-k", "raises", "--format", "json")
    assert done.returncode == 1, done.stderr
    results = json.loads(done.stdout)["results"]
    assert [(r["check"], r["status"]) for r in results] == [("backend", "error")]
    error = results[0]
    assert error["message"] == "ValueError: cannot reshape array of size 6 into shape (5,)"
    assert f'File "{cases}", line 32, in _' in error["traceback"]
    assert "detharness/runner.py" not in error["traceback"]  # the harness's own frames are trimmed
    # The brief text says it in one line; -v shows the traceback's last lines.
    brief = run_cli("run", "--cases", str(cases), "-k", "raises")
    assert "  ERROR     backend named/raises[broken:cpu:float32:eager]: ValueError: cannot reshape" in brief.stdout
    text = run_cli("run", "--cases", str(cases), "-k", "raises", "-v")
    assert f'File "{cases}", line 32, in _' in text.stdout


def test_a_failed_reference_is_named_in_every_result_it_costs(tmp_path: Path) -> None:
    cases = write_cases(tmp_path / "mine", """
        import numpy as np
        from detharness import case

        c = case("named/noref", inputs=lambda rng: {"x": np.ones(3)})

        @c.impl("ref", backend="numpy", reference=True, dtypes=("float64",))
        def _(x):
            raise RuntimeError("reference broke")

        @c.impl("a", backend="numpy")
        def _(x):
            return {"y": x}
    """)
    done = run_cli("run", "--cases", str(cases), "--format", "json")
    results = json.loads(done.stdout)["results"]
    assert [(r["status"], r["message"]) for r in results] == [
        ("error", "reference named/noref[ref:cpu:float64:eager] failed: RuntimeError: reference broke")]
    assert "reference broke" in results[0]["traceback"]


def test_a_variant_that_fails_with_nothing_held_against_it_is_still_an_error(tmp_path: Path) -> None:
    """A case's only implementation, or a reference whose candidates were not selected, is compared
    with nothing: its error is a result of its own, never "nothing compared" and exit 0."""
    cases = write_cases(tmp_path / "mine", """
        import numpy as np
        from detharness import case

        alone = case("lone/ref", inputs=lambda rng: {"x": np.ones(3)})

        @alone.impl("ref", backend="numpy", reference=True)
        def _(x):
            raise ValueError("the only implementation broke")

        pair = case("pair/sum", inputs=lambda rng: {"x": np.ones(3)})

        @pair.impl("ref", backend="numpy", reference=True, dtypes=("float64",))
        def _(x):
            raise RuntimeError("reference broke")

        @pair.impl("fine", backend="numpy")
        def _(x):
            return {"y": x}

        fine = case("lone/fine", inputs=lambda rng: {"x": np.ones(3)})

        @fine.impl("ref", backend="numpy", reference=True)
        def _(x):
            return {"y": x}
    """)
    done = run_cli("run", "--cases", str(cases), "-k", "lone", "--format", "json")
    assert done.returncode == 1, done.stderr
    results = json.loads(done.stdout)["results"]
    assert [(r["check"], r["variant"], r["status"], r["message"]) for r in results] == [
        ("backend", "lone/ref[ref:cpu:float32:eager]", "error", "ValueError: the only implementation broke")]
    assert "the only implementation broke" in results[0]["traceback"]
    # the reference alone (its candidate deselected): its own error, once
    only_ref = run_cli("run", "--cases", str(cases), "-k", "pair/sum and ref", "--format", "json")
    assert only_ref.returncode == 1
    ref_results = json.loads(only_ref.stdout)["results"]
    assert [r["message"] for r in ref_results] == ["RuntimeError: reference broke"]
    # each reproduce line, pasted, runs that variant again and gives the same error
    for result in (results[0], ref_results[0]):
        words = shlex.split(result["reproduce"])
        assert words[:2] == ["detharness", "run"]
        again = run_cli(*words[1:], "--format", "json")
        assert again.returncode == 1, again.stderr
        assert [r["message"] for r in json.loads(again.stdout)["results"]] == [result["message"]]
    # the backend check is the one that holds a case's only implementation
    assert run_cli("run", "--cases", str(cases), "-k", "lone/ref", "--check", "backend").returncode == 1
    # where the failed reference is named by its candidate's result, it is not reported twice
    both = run_cli("run", "--cases", str(cases), "-k", "pair/sum", "--format", "json")
    assert [r["variant"] for r in json.loads(both.stdout)["results"]] == ["pair/sum[fine:cpu:float32:eager]"]
    # a lone variant that ran is still nothing compared, exit 0
    assert run_cli("run", "--cases", str(cases), "-k", "lone/fine").returncode == 0


def test_a_forgotten_return_or_an_object_output_is_that_variants_error(tmp_path: Path) -> None:
    cases = write_cases(tmp_path / "mine", """
        import numpy as np
        from detharness import case

        c = case("user/outputs", inputs=lambda rng: {"x": np.ones(3, "float32")})

        @c.impl("ref", backend="numpy", reference=True)
        def _(x):
            return {"y": x}

        @c.impl("forgot", backend="numpy")
        def _(x):
            x * 2

        @c.impl("objects", backend="numpy")
        def _(x):
            return {"y": np.array([{1}, None], dtype=object)}

        @c.impl("good", backend="numpy")
        def _(x):
            return {"y": x}
    """)
    done = run_cli("run", "--cases", str(cases), "--format", "json", "--out", str(tmp_path / "b"))
    assert done.returncode == 1, done.stderr
    by_impl = {r["variant"].split("[")[1].split(":")[0]: r for r in json.loads(done.stdout)["results"]}
    assert by_impl["forgot"]["status"] == "error" and "returned None (a forgotten return?)" in by_impl["forgot"]["message"]
    assert by_impl["objects"]["status"] == "error" and "output 'y' is an array of dtype object" in by_impl["objects"]["message"]
    assert by_impl["good"]["status"] == "identical"
    assert (tmp_path / "b" / "manifest.json").is_file()


NUMPY_CASES = """
    import os
    import time

    import numpy as np

    from detharness import case

    c = case("np/slow", inputs=lambda rng: {"x": np.ones(4, dtype="float32")})

    @c.impl("ref", backend="numpy", reference=True)
    def _(x):
        # DH_TEST_HOLD names a file: the variant waits (60 s at most) until it exists, holding
        # the run, and with it the bundle's lock, for as long as the test needs.
        hold = os.environ.get("DH_TEST_HOLD")
        deadline = time.monotonic() + 60
        while hold and not os.path.exists(hold) and time.monotonic() < deadline:
            time.sleep(0.02)
        return {"y": x * 2}

    @c.impl("other", backend="numpy")
    def _(x):
        return {"y": x + x}
"""


def _variants_of(bundle: Path) -> set[str]:
    return set(json.loads((bundle / "manifest.json").read_text())["variants"])


def test_a_second_writer_of_the_same_out_is_refused_naming_the_holder(tmp_path: Path) -> None:
    import os
    import socket
    import time

    cases = write_cases(tmp_path / "np", NUMPY_CASES)
    out = tmp_path / "same"
    release = tmp_path / "release"
    env = {**os.environ, "DH_TEST_HOLD": str(release)}
    env.pop("CI", None)
    first = subprocess.Popen([sys.executable, "-m", "detharness", "run", "--cases", str(cases), "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not (out / ".detharness.lock").exists():
            assert time.monotonic() < deadline and first.poll() is None, "the first run took no lock"
            time.sleep(0.05)
        second = run_cli("run", "--cases", str(cases), "-k", "other", "--out", str(out))
        assert second.returncode == 2, second.stdout + second.stderr
        assert second.stderr.count("\n") == 1
        assert f"pid {first.pid} on {socket.gethostname()}" in second.stderr
        assert "another detharness run is writing" in second.stderr
    finally:
        release.touch()
        stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stdout + stderr
    assert len(_variants_of(out)) == 2  # the first run's bundle, whole
    assert not (out / ".detharness.lock").exists()


def test_a_dead_writers_lock_is_taken_over(tmp_path: Path) -> None:
    import socket

    cases = write_cases(tmp_path / "np", NUMPY_CASES)
    out = tmp_path / "b"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / ".detharness.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(),
                                                      "started": "2026-01-01T00:00:00+00:00"}))
    result = run_cli("run", "--cases", str(cases), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert len(_variants_of(out)) == 2 and not (out / ".detharness.lock").exists()


def test_out_must_be_new_empty_or_with_replace_a_bundle(tmp_path: Path) -> None:
    cases = write_cases(tmp_path / "np", NUMPY_CASES)
    (tmp_path / "notes.txt").write_text("mine")
    here = run_cli("run", "--cases", str(cases), "--out", ".", cwd=tmp_path)
    assert here.returncode == 2 and here.stderr.count("\n") == 1, here.stderr
    assert "not empty and not a bundle" in here.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "np"]  # nothing written into it
    replace_other = run_cli("run", "--cases", str(cases), "--out", ".", "--replace", cwd=tmp_path)
    assert replace_other.returncode == 2 and "not empty and not a bundle" in replace_other.stderr

    out = tmp_path / "b"
    out.mkdir()  # empty: fine
    assert run_cli("run", "--cases", str(cases), "-k", "other", "--out", str(out)).returncode == 0
    assert not (out / "parts").exists()  # a finished bundle keeps no empty parts/ folder
    before = (out / "manifest.json").read_bytes()
    again = run_cli("run", "--cases", str(cases), "--out", str(out))
    assert again.returncode == 2 and "--replace" in again.stderr
    assert (out / "manifest.json").read_bytes() == before
    replaced = run_cli("run", "--cases", str(cases), "--out", str(out), "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads((out / "manifest.json").read_text())["options"]["keyword"] is None
    assert len(_variants_of(out)) == 2 and not (out / ".detharness.lock").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "notes.txt", "np"]  # no staging folder left


def test_a_selection_of_nothing_exits_2_and_no_out_says_no_bundle(tmp_path: Path) -> None:
    cases = write_cases(tmp_path / "np", NUMPY_CASES)
    for selection in (["-k", "nothing_matches"], ["--tag", "nope"], ["--backend", "torch"]):
        result = run_cli("run", "--cases", str(cases), *selection, "--out", str(tmp_path / "b"))
        assert result.returncode == 2, (selection, result.stdout, result.stderr)
        assert result.stderr.count("\n") == 1 and "selects no variant" in result.stderr
        assert not (tmp_path / "b").exists()
    plain = run_cli("run", "--cases", str(cases))
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.rstrip("\n").splitlines()[-1] == "no bundle written (use --out DIR)"


def test_cli_details_version_list_titles_and_timeout_default(tmp_path: Path) -> None:
    from detharness import __version__

    version = run_cli("-V")
    assert version.returncode == 0 and version.stdout.strip() == f"detharness {__version__}"
    cases = write_cases(tmp_path / "np", NUMPY_CASES)
    listed = run_cli("list", "--cases", str(cases), "-k", "ref")
    header = listed.stdout.splitlines()[0].split()
    assert header == ["variant", "tags", "role", "note"]
    assert "\n1 case, 1 variant" in listed.stdout
    assert "(default: 600" in run_cli("run", "--help").stdout


def test_display_path_hides_the_home_folder_and_shell_path_runs_from_anywhere(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from detharness.cases import display_path, shell_path

    home, work, other = tmp_path / "home", tmp_path / "work", tmp_path / "other"
    for folder in (home / "my proj", work / "cases", other):
        folder.mkdir(parents=True)
    (home / "my proj" / "c.py").write_text("")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    assert display_path(work / "cases") == "cases"  # under the working folder: relative, as before
    assert display_path(home / "my proj" / "c.py") == "~/my proj/c.py"
    assert display_path(home) == "~"
    assert display_path(other) == str(other)
    word = shell_path(home / "my proj" / "c.py")
    assert word == "\"$HOME\"/'my proj/c.py'"
    assert shell_path("~/my proj/c.py") == word  # what display_path wrote, made a shell word
    assert shell_path("cases") == "cases" and shell_path(other / "a b") == f"'{other}/a b'"
    pasted = subprocess.run(["sh", "-c", f"test -f {word} && echo found"], cwd=other, capture_output=True, text=True,
                            env={**os.environ, "HOME": str(home)})
    assert pasted.stdout == "found\n", pasted.stderr


def test_a_run_of_home_folder_cases_stores_no_home_path(tmp_path: Path) -> None:
    home, other = tmp_path / "home", tmp_path / "elsewhere"
    other.mkdir()
    cases = write_cases(home / "proj", NUMPY_CASES)
    result = run_cli("run", "--cases", str(cases), "--out", str(other / "b"), cwd=other, env={"HOME": str(home)})
    assert result.returncode == 0, result.stderr
    manifest = json.loads((other / "b" / "manifest.json").read_text())
    assert manifest["options"]["cases"] == ["~/proj/cases.py"]
    assert manifest["cases"]["np/slow"]["location"].startswith("~/proj/cases.py:")
    assert str(home) not in result.stdout


def test_a_reproduce_line_of_home_folder_cases_runs_when_pasted_elsewhere(tmp_path: Path) -> None:
    import os

    home, other, third = tmp_path / "home", tmp_path / "elsewhere", tmp_path / "third"
    other.mkdir()
    third.mkdir()
    cases = write_cases(home / "proj", CRASHING_CASES.replace("segfault", "segv").replace("hang", "slow"))
    result = run_cli("run", "--cases", str(cases), "-k", "raises", "--format", "json", cwd=other,
                     env={"HOME": str(home)})
    line = next(r["reproduce"] for r in json.loads(result.stdout)["results"] if r["reproduce"])
    env = {**os.environ, "HOME": str(home), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("CI", None)
    pasted = subprocess.run(["sh", "-c", line], cwd=third, capture_output=True, text=True, env=env)
    assert pasted.returncode == 1, pasted.stdout + pasted.stderr  # the variant's error, run again
    assert "bad shape in the serving code" in pasted.stdout


def test_a_report_or_tolerances_file_that_cannot_be_written_is_one_line_and_exit_2(small_cases: Path,
                                                                                    tmp_path: Path) -> None:
    bundle = tmp_path / "A"
    assert run_cli("run", "--cases", str(small_cases), "-k", "numpy", "--out", str(bundle),
                   "--in-process").returncode == 0
    (tmp_path / "taken.html").mkdir()
    for args, message in [
        (["report", str(bundle), "--report", str(tmp_path / "taken.html")], "Is a directory"),
        (["report", str(bundle), "--report", "/proc/no/such/r.md"], "No such file or directory"),
        (["tolerances", str(bundle), "--write", "/proc/no/such/t.json"], "No such file or directory"),
    ]:
        done = run_cli(*args, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("detharness: error: ") and message in done.stderr
        assert done.stderr.count("\n") == 1
    # What could be written was: a second --report after the bad one is not reached, the first is.
    done = run_cli("report", str(bundle), "--report", str(tmp_path / "ok.md"), "--report",
                   str(tmp_path / "taken.html"), cwd=tmp_path)
    assert done.returncode == 2 and (tmp_path / "ok.md").exists()
