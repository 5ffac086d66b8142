"""``detharness matrix``: profiles files, pinned-version overlays, failing profiles, a real small matrix."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from detharness import matrix
from detharness.matrix import Pin, ProfileError, ensure_overlay, load_profiles, parse_pins, parse_profiles
from tests.conftest import ROOT, run_cli


def profiles(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profiles.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_the_shipped_profiles_file_parses() -> None:
    spec = load_profiles(ROOT / "ci" / "profiles.toml")
    names = [p.name for p in spec.ordered()]
    assert names[0] == "baseline"
    assert {"aten-default", "aten-avx2", "aten-avx512", "xla-sse4_2", "omp-1", "omp-2", "numpy-2.2",
            "onnxruntime-1.31", "jax-0.9"} <= set(names)
    by_name = {p.name: p for p in spec.profiles}
    assert by_name["aten-default"].env == {"ATEN_CPU_CAPABILITY": "default"}
    assert by_name["jax-0.9"].pins == (Pin("jax", "0.9.2"), Pin("jaxlib", "0.9.2"))
    assert by_name["numpy-2.2"].describe() == "numpy==2.2.6"


def test_a_profiles_file_with_every_key(tmp_path: Path) -> None:
    (tmp_path / "pins").mkdir()
    (tmp_path / "pins" / "np.txt").write_text("# older numpy\nnumpy == 2.2.6  # the last 2.2\n\n")
    spec = load_profiles(profiles(tmp_path, """
        [matrix]
        baseline = "threads"
        keyword = "softmax and torch"
        cases = ["my_cases"]
        device = "cpu"
        timeout = 60
        overlays = "cache"

        [profiles.plain]

        [profiles.threads]
        description = "one thread"
        env = { OMP_NUM_THREADS = 1, XLA_FLAGS = "--xla_cpu_max_isa=SSE4_2" }
        unset = ["MKL_NUM_THREADS"]

        [profiles."numpy-2.2"]
        pins = "pins/np.txt"
    """))
    assert [p.name for p in spec.ordered()] == ["threads", "plain", "numpy-2.2"]
    threads = spec.profiles[1]
    assert threads.env == {"OMP_NUM_THREADS": "1", "XLA_FLAGS": "--xla_cpu_max_isa=SSE4_2"}
    assert threads.describe() == "OMP_NUM_THREADS=1 XLA_FLAGS=--xla_cpu_max_isa=SSE4_2 -MKL_NUM_THREADS"
    assert spec.profiles[2].pins == (Pin("numpy", "2.2.6"),)
    assert spec.cases == [str(tmp_path / "my_cases")] and spec.overlays == str(tmp_path / "cache")
    assert (spec.keyword, spec.device, spec.timeout) == ("softmax and torch", "cpu", 60.0)
    assert [p.name for p in spec.select(["numpy-2.2"]).profiles] == ["threads", "numpy-2.2"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[profiles.a\n", "P: not valid TOML: "),
        ("[matrix]\n", "P: has no [profiles.NAME] tables"),
        ("[profile.a]\n", "P: unknown table [profile]; a profiles file has [matrix] and [profiles.NAME]"),
        ("[profiles.a]\nenviron = {}\n", "P: [profiles.a]: unknown key 'environ'; known keys: description, env, unset, pins"),
        ("[profiles.numpy-2.2]\n", "P: [profiles.numpy-2]: unknown key '2'; a profile name with a dot must be quoted: "
                                   '[profiles."numpy-2.2"]'),
        ('[profiles."a b"]\n', "P: [profiles.a b]: a profile name is 1-64 letters, digits"),
        ('[profiles."report.md"]\n', "P: [profiles.report.md]: a profile name is 1-64 letters"),
        ("[profiles.a]\nenv = { X = true }\n", 'P: [profiles.a]: env X must be a string or a number, got bool '
                                               '(write "1" or "0" for a flag)'),
        ("[profiles.a]\nenv = { 'A-B' = '1' }\n", "P: [profiles.a]: env: 'A-B' is not a variable name"),
        ("[profiles.a]\nenv = { X = '1' }\nunset = ['X']\n", "P: [profiles.a]: X is both set (env) and unset"),
        ("[profiles.a]\npins = 'nope.txt'\n", "pins file nope.txt: no such file"),
        ("[profiles.a]\npins = 'bad.txt'\n", "pins file bad.txt, line 2: 'numpy>=2.2' is not an exact pin "
                                             "(write name==version)"),
        ("[matrix]\nbaseline = 'b'\n[profiles.a]\n", "P: [matrix] baseline 'b' is not a profile; profiles: a"),
        ("[matrix]\ndevice = 'tpu'\n[profiles.a]\n", "P: [matrix] device 'tpu': choose cpu, cuda or all"),
        ("[matrix]\ntimeout = -1\n[profiles.a]\n", "P: [matrix] timeout must be a positive number of seconds, got -1"),
        ("[matrix]\nparallel = 2\n[profiles.a]\n", "P: [matrix]: unknown key 'parallel'; known keys: description"),
    ],
    ids=["toml-syntax", "no-profiles", "unknown-table", "unknown-key", "unquoted-dot", "bad-name", "reserved-name",
         "bool-variable", "bad-variable", "set-and-unset", "missing-pins", "range-not-pin", "unknown-baseline",
         "bad-device", "bad-timeout", "unknown-matrix-key"],
)
def test_bad_profiles_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad.txt").write_text("numpy==2.2.6\nnumpy>=2.2\n")
    with pytest.raises(ProfileError) as info:
        parse_profiles(text, where="P", base=tmp_path)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_bad_profiles_file_exits_2_with_one_line(tmp_path: Path) -> None:
    path = profiles(tmp_path, "[profiles.a]\nenv = { X = [1] }\n")
    done = run_cli("matrix", str(path), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr == f"detharness: error: {path}: [profiles.a]: env X must be a string or a number, got list " \
                          f"(write \"1\" or \"0\" for a flag)\n"
    missing = run_cli("matrix", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "out"))
    assert (missing.returncode, missing.stderr) == (2, f"detharness: error: {tmp_path / 'nope.toml'}: no such file\n")


def test_pins_file_refuses_an_empty_pin_set(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ProfileError, match="pins nothing"):
        parse_pins(tmp_path / "empty.txt")


def fake_wheel(folder: Path, name: str = "dh_overlay_probe", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel, so overlay installs are tested without a network."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": f"VERSION = {version!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: detharness-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


@pytest.fixture
def offline_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip that sees only a local folder of wheels: no index, no network."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    return wheels


def test_overlay_is_installed_once_reused_and_first_on_the_path(tmp_path: Path, offline_pip: Path) -> None:
    wheel = fake_wheel(offline_pip)
    pins = [Pin("dh_overlay_probe", "1.0")]
    folder, reused = ensure_overlay(pins, tmp_path / "cache")
    assert not reused and (folder / "dh_overlay_probe.py").exists()
    stamp = json.loads((folder / matrix.STAMP).read_text())
    assert stamp["pins"] == ["dh_overlay_probe==1.0"]
    wheel.unlink()  # a second install would now fail: reuse must not call pip
    assert ensure_overlay(pins, tmp_path / "cache") == (folder, True)
    profile = matrix.Profile(name="p", pins=tuple(pins), env={"DH_X": "1"}, unset=("DH_GONE",))
    env = matrix.profile_environment(profile, folder, base={"PYTHONPATH": "/elsewhere", "DH_GONE": "x"})
    assert env == {"PYTHONPATH": f"{folder}{os.pathsep}/elsewhere", "DH_X": "1"}
    probe = subprocess.run([sys.executable, "-c", "import dh_overlay_probe, importlib.metadata as m; "
                            "print(dh_overlay_probe.VERSION, m.version('dh_overlay_probe'))"],
                           env={**os.environ, **env}, capture_output=True, text=True, check=True)
    assert probe.stdout.split() == ["1.0", "1.0"]


def test_a_broken_overlay_folder_is_not_reused(tmp_path: Path, offline_pip: Path) -> None:
    fake_wheel(offline_pip)
    pins = [Pin("dh_overlay_probe", "1.0")]
    folder, _ = ensure_overlay(pins, tmp_path / "cache")
    (folder / matrix.STAMP).unlink()  # as if pip had been killed half way
    assert ensure_overlay(pins, tmp_path / "cache") == (folder, False)


def test_overlay_that_cannot_install_is_a_setup_error(tmp_path: Path, offline_pip: Path) -> None:
    with pytest.raises(matrix.SetupError, match=r"pip install dh-no-such-package==1\.0 failed \(exit 1\): ERROR: "):
        ensure_overlay([Pin("dh-no-such-package", "1.0")], tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").iterdir()]  # no half-made overlay left behind


def test_unknown_aten_capability_and_pins_that_did_not_take_effect_are_recorded() -> None:
    profile = matrix.Profile(name="p", env={"ATEN_CPU_CAPABILITY": "avx512_bf16"}, pins=(Pin("numpy", "2.2.6"),))
    outcome = matrix.ProfileOutcome(name="p", changes=profile.describe())
    matrix._check_outcome(outcome, profile, {"torch.cpu_capability": "AVX512", "numpy.version": "2.4.6"})
    assert outcome.notes == ["ATEN_CPU_CAPABILITY=avx512_bf16 asked for; torch ran AVX512"]
    assert (outcome.status, outcome.reason) == ("run failed", "the overlay did not take effect: numpy 2.4.6 ran, "
                                                              "2.2.6 pinned")
    torch_pin = matrix.Profile(name="t", pins=(Pin("torch", "2.13.0"),))
    fine = matrix.ProfileOutcome(name="t", changes="")
    matrix._check_outcome(fine, torch_pin, {"torch.version": "2.13.0+cpu"})
    assert fine.status == "ok" and fine.versions == {"torch": "2.13.0+cpu"}


def test_the_report_compares_the_records_run_matrix_read_back_without_reading_them_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from detharness import record as record_mod
    from detharness.record import RunRecord, VariantRecord

    vid = "models/softmax[numpy:cpu:float32:eager]"
    outcomes = []
    for name, y in (("baseline", np.zeros(4, np.float32)), ("aten-default", np.ones(4, np.float32))):
        variant = VariantRecord(id=vid, case="models/softmax", impl="numpy", backend="numpy", device="cpu",
                                dtype="float32", mode="eager", status="ok", outputs={"y": y})
        record = RunRecord(environment={"profile": name}, environment_id=f"{name}-id", variants={vid: variant})
        record_mod.save(record, tmp_path / name)
        outcomes.append(matrix.ProfileOutcome(name=name, changes="", bundle=str(tmp_path / name),
                                              record=record_mod.load(tmp_path / name)))
    loads: list[str] = []
    monkeypatch.setattr(record_mod, "load", lambda path: loads.append(str(path)))
    spec = parse_profiles("[profiles.baseline]\n[profiles.aten-default]\n")
    report = matrix.matrix_report(spec, outcomes)
    assert loads == []  # each bundle was read (and every array hashed) once, by run_matrix
    assert [(r["candidate_label"], r["status"]) for r in report["results"]] == [("aten-default", "diverged")]
    assert "record" not in report["profiles"][0]


def test_a_failed_profiles_reason_names_its_log_as_reports_show_paths(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reason lands in published reports beside ``log``: both name no home folder."""
    import shutil

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(ROOT)
    spec = parse_profiles("[profiles.baseline]\n")
    (outcome,) = matrix.run_matrix(spec, tmp_path / "out", python=str(shutil.which("false")))
    assert (outcome.status, outcome.exit_code, outcome.log) == ("run failed", 1, "~/out/baseline.log")
    assert outcome.reason.startswith("detharness run exited 1:") and outcome.reason.endswith(
        " (see ~/out/baseline.log)")
    assert str(tmp_path) not in outcome.reason


@pytest.mark.slow
def test_a_real_matrix_attributes_softmax_to_torchs_capability_and_survives_failing_profiles(
        tmp_path: Path, offline_pip: Path) -> None:
    """Two real profiles and two that fail: one cannot install its pins, one breaks numpy on import."""
    broken = tmp_path / "broken"
    (broken / "numpy").mkdir(parents=True)
    (broken / "numpy" / "__init__.py").write_text("raise ImportError('numpy is broken in this overlay')\n")
    (tmp_path / "missing.txt").write_text("dh-no-such-package==1.0\n")
    path = profiles(tmp_path, f"""
        [matrix]
        device = "cpu"

        [profiles.baseline]

        [profiles.unpinnable]
        pins = "missing.txt"

        [profiles.aten-default]
        env = {{ ATEN_CPU_CAPABILITY = "default" }}

        [profiles.broken-numpy]
        env = {{ PYTHONPATH = {json.dumps(str(broken))} }}
    """)
    out = tmp_path / "out"
    done = run_cli("matrix", str(path), "-k", "models/softmax and torch and float32 and eager", "--out", str(out),
                   "--overlays", str(tmp_path / "cache"), "--format", "json")
    assert done.returncode == 1, done.stderr  # the failed profiles are errors
    report = json.loads(done.stdout)
    status = {p["name"]: (p["status"], p["reason"]) for p in report["profiles"]}
    assert status["baseline"] == ("ok", "") and status["aten-default"] == ("ok", "")
    assert status["unpinnable"][0] == "setup failed"
    assert status["unpinnable"][1].startswith("pip install dh-no-such-package==1.0 failed (exit 1): ERROR:")
    assert status["broken-numpy"][0] == "run failed"
    assert "ImportError: numpy is broken in this overlay" in status["broken-numpy"][1]
    capabilities = {p["name"]: p["torch_cpu_capability"] for p in report["profiles"]}
    assert capabilities["aten-default"] == "DEFAULT" and capabilities["baseline"] not in (None, "DEFAULT")
    errors = [r["message"] for r in report["results"] if r["check"] == "matrix"]
    assert len(errors) == 2 and errors[0].startswith("profile ")
    (entry,) = [e for e in report["attribution"] if any(m["variant"] == "models/softmax[torch:cpu:float32:eager]"
                                                        for m in e["members"])]
    assert entry["differing"] == ["aten-default"] and entry["keys"] == ["torch.cpu_capability"]
    assert entry["line"].startswith("every environment with torch.cpu_capability=DEFAULT [aten-default] differs "
                                    "from baseline on models/softmax[torch:cpu:float32:eager] y (")
    assert ["env.ATEN_CPU_CAPABILITY"] in entry["alternatives"]
    for name in ("report.md", "report.json", "report.txt", "baseline/manifest.json", "aten-default/manifest.json",
                 "broken-numpy.log"):
        assert (out / name).exists(), name
    assert "every environment with torch.cpu_capability=DEFAULT" in (out / "report.md").read_text()
    # aten-default replayed the baseline's inputs
    manifest = json.loads((out / "aten-default" / "manifest.json").read_text())
    assert manifest["options"]["inputs_from"] == str(out / "baseline")
    # The same bundles through compare give the same attribution.
    compared = run_cli("compare", str(out / "baseline"), str(out / "aten-default"), str(out / "baseline"),
                       "--format", "json")
    lines = [e["line"] for e in json.loads(compared.stdout)["attribution"]]
    assert any(line.startswith("every environment with torch.cpu_capability=DEFAULT [aten-default]") for line in lines)
    again = run_cli("matrix", str(path), "--out", str(out))
    assert (again.returncode, again.stderr) == (2, f"detharness: error: --out {out}: not an empty folder; "
                                                   "choose a new one\n")


FAKE_RUN = '''\
import sys

import numpy as np

from detharness import record as record_mod
from detharness.record import RunRecord, VariantRecord
from detharness.results import Result

out = sys.argv[sys.argv.index("--out") + 1]
profile = out.rsplit("/", 1)[-1]
vid = "models/linear[torch:cpu:bfloat16:onnx]"
ok = VariantRecord(id="models/linear[torch:cpu:float32:eager]", case="models/linear", impl="torch",
                   backend="torch", device="cpu", dtype="float32", mode="eager", status="ok",
                   outputs={"y": np.zeros(4, np.float32)})
if profile == "baseline":
    onnx = VariantRecord(id=vid, case="models/linear", impl="torch", backend="torch", device="cpu",
                         dtype="bfloat16", mode="onnx", status="skipped", error="bfloat16 not supported here")
    verdicts = []
else:
    onnx = VariantRecord(id=vid, case="models/linear", impl="torch", backend="torch", device="cpu",
                         dtype="bfloat16", mode="onnx", status="error",
                         error="worker crashed: Unsupported model IR version: 14")
    verdicts = [Result(check="backend", case="models/linear", variant=vid, status="error",
                       message="worker crashed: Unsupported model IR version: 14")]
record = RunRecord(environment={"profile.name": profile}, environment_id=profile + "-id",
                   variants={v.id: v for v in (ok, onnx)}, verdicts=verdicts)
record_mod.save(record, out)
sys.exit(1 if verdicts else 0)
'''


def test_a_profile_whose_run_had_errors_is_not_ok_and_its_errors_fail_the_matrix(tmp_path: Path) -> None:
    """Its run exited 1 with errors where the baseline skipped: not ``ok``, and the comparison is an error."""
    script = tmp_path / "fake_python"
    script.write_text(f"#!{sys.executable}\n" + "import runpy, sys\nsys.argv = sys.argv[2:]\n"
                      f"runpy.run_path({str(tmp_path / 'fake_run.py')!r}, run_name='__main__')\n")
    script.chmod(0o755)
    (tmp_path / "fake_run.py").write_text(FAKE_RUN)
    spec = parse_profiles("[profiles.baseline]\n[profiles.onnxruntime-1-31]\n")
    outcomes = matrix.run_matrix(spec, tmp_path / "out", python=str(script))
    status = {o.name: (o.status, o.errors, o.exit_code) for o in outcomes}
    assert status == {"baseline": ("ok", 0, 0), "onnxruntime-1-31": ("errors", 1, 1)}
    assert outcomes[1].reason.startswith("its run had 1 error (exit 1); first: models/linear[torch:cpu:bfloat16:onnx]: "
                                         "worker crashed: Unsupported model IR version: 14 (see ")
    report = matrix.matrix_report(spec, outcomes)
    assert [p["status"] for p in report["profiles"]] == ["ok", "errors"]
    errors = [(r["check"], r["variant"], r["message"]) for r in report["results"] if r["status"] == "error"]
    assert errors == [("environment", "models/linear[torch:cpu:bfloat16:onnx]",
                       "candidate: worker crashed: Unsupported model IR version: 14 "
                       "(baseline skipped: bfloat16 not supported here)")]
    assert report["summary"]["error"] == 1
    # Alone, its errors have nothing to surface through: the matrix reports them itself.
    alone = matrix.matrix_report(parse_profiles("[profiles.onnxruntime-1-31]\n"), outcomes[1:])
    assert [(r["check"], r["status"]) for r in alone["results"]] == [("matrix", "error")]


def test_a_profiles_reproduce_line_runs_as_pasted_and_names_no_home_folder(tmp_path: Path) -> None:
    home = os.path.expanduser("~")
    line = matrix.reproduce_line(
        {"A": "two words", "PYTHONPATH": f"{home}/.cache/o 1{os.pathsep}{home}/src", "E": "aarch64 qemu cpu=n1"},
        ["DH_GONE"], ["python3", "-c", "import os; print(repr([os.environ.get(k) for k in "
                                       "('A', 'PYTHONPATH', 'E', 'DH_GONE')]))"])
    assert home + "/" not in line
    done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, check=True,
                          env={**os.environ, "DH_GONE": "1"})
    assert done.stdout.strip() == repr(["two words", f"{home}/.cache/o 1{os.pathsep}{home}/src", "aarch64 qemu cpu=n1",
                                        None])


def test_no_cache_reaches_every_profile_through_its_command_and_leaves_detharness_s_environment(tmp_path: Path) -> None:
    """``matrix --no-cache`` runs each profile with ``--no-cache`` (so its reproduce line says it), and
    sets nothing in the process that called it (run_cli checks its environment is as it was)."""
    path = tmp_path / "profiles.toml"
    path.write_text('[matrix]\nkeyword = "preprocessing/min_max_scale"\nbackends = ["numpy"]\ndevice = "cpu"\n'
                    '[profiles.one]\n[profiles.two]\nenv = { OMP_NUM_THREADS = "1" }\n')
    done = run_cli("matrix", str(path), "--out", str(tmp_path / "out"), "--no-cache", "--format", "json")
    assert done.returncode == 0, done.stderr
    profiles = json.loads(done.stdout)["profiles"]
    assert [p["status"] for p in profiles] == ["ok", "ok"]
    assert all(p["command"].endswith(" --no-cache") for p in profiles), profiles
