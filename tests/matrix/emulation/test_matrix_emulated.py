"""Emulated profiles of ``detharness matrix``: parsing, the command and environment they run with, a
profile skipped where this machine cannot emulate, and one numpy-only aarch64 profile end to end
under the real emulator (skipped, saying why, where ci/setup-arm.sh has not run)."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from detharness.matrix import ProfileError, emulation, load_profiles, parse_profiles, run_command
from detharness.matrix.emulation import Emulator, Prepared
from tests.conftest import ROOT, aarch64_emulation_missing, run_cli


def spec_of(text: str):  # type: ignore[no-untyped-def]
    return parse_profiles(textwrap.dedent(text), where="p.toml", base=ROOT / "ci")


def test_the_shipped_arm_profiles_file_parses() -> None:
    spec = load_profiles(ROOT / "ci" / "profiles-arm.toml")
    by_name = {p.name: p for p in spec.profiles}
    assert spec.baseline == "x86" and by_name["x86"].emulate is None
    n1, sve = by_name["arm-neoverse-n1"], by_name["arm-a64fx"]
    assert (n1.emulate, n1.cpu, sve.emulate, sve.cpu) == ("aarch64", "neoverse-n1", "aarch64", "a64fx")
    pinned = {pin.name: pin.version for pin in n1.pins}
    # the same versions as the x86 pins, so the architecture is what differs
    cpu_pins = dict(line.split("==") for line in (ROOT / "ci/pins/cpu.txt").read_text().split()
                    if "==" in line and not line.startswith("#"))
    for name in ("numpy", "torch", "onnxruntime", "jax", "jaxlib", "ml_dtypes"):
        assert pinned[name] == cpu_pins[name], name
    assert n1.describe().startswith("emulated aarch64 (QEMU, cpu neoverse-n1)")
    # the ARM profiles live apart: the main matrix needs no root and keeps its time
    assert not any(p.emulate for p in load_profiles(ROOT / "ci" / "profiles.toml").profiles)


def test_an_emulated_profile_takes_the_default_cpu_and_its_own_keyword_and_timeout() -> None:
    spec = spec_of("""
        [matrix]
        keyword = "softmax"
        timeout = 60
        [profiles.host]
        [profiles.arm]
        emulate = "aarch64"
        keyword = "not onnx"
        timeout = 900
    """)
    host, arm = spec.profiles
    assert arm.cpu == emulation.ARCHES["aarch64"].default_cpu
    host_command = run_command(spec, Path("b"), keyword=None, inputs_from=None, profile=host)
    arm_command = run_command(spec, Path("b"), keyword="float32", inputs_from=None, profile=arm)
    assert host_command[host_command.index("-k") + 1] == "softmax"
    assert host_command[host_command.index("--timeout") + 1] == "60"
    # the profile's -k narrows the command line's (which replaces the matrix's)
    assert arm_command[arm_command.index("-k") + 1] == "(not onnx) and (float32)"
    assert arm_command[arm_command.index("--timeout") + 1] == "900"
    # the emulated interpreter cannot find an installed case library: it is named
    assert "--cases" in arm_command and "--cases" not in host_command
    # without a timeout of its own, an emulated profile gets the matrix's, scaled for emulation
    unset = spec_of("""
        [profiles.host]
        [profiles.arm]
        emulate = "aarch64"
    """)
    scaled = run_command(unset, Path("b"), keyword=None, inputs_from=None, profile=unset.profiles[1])
    assert float(scaled[scaled.index("--timeout") + 1]) == 600 * 10


@pytest.mark.parametrize(("body", "message"), [
    ('emulate = "riscv64"', "emulate 'riscv64': choose from aarch64"),
    ('cpu = "neoverse-n1"', "only for an emulated profile"),
    ('emulate = "aarch64"\ncpu = "max; rm -rf /"', "not a QEMU CPU model name"),
    ('emulate = "aarch64"\nkeyword = ""', "keyword must be a non-empty string"),
    ('emulate = "aarch64"\ntimeout = -1', "timeout must be a positive number"),
])
def test_bad_emulated_profiles_are_one_line_errors(body: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec_of(f"[profiles.host]\n[profiles.arm]\n{body}\n")


def test_the_emulated_environment_drops_misleading_host_variables_and_never_the_host_site(tmp_path: Path) -> None:
    prepared = Prepared(arch="aarch64", cpu="neoverse-n1", emulator=Emulator("/usr/bin/qemu-aarch64-static", "7.2.22"),
                        root=tmp_path / "root", launcher=tmp_path / "bin/python3",
                        env={"PYTHONPATH": str(tmp_path / "src"), "PYTHONNOUSERSITE": "1",
                             "DETHARNESS_WORKER_PYTHON": str(tmp_path / "bin/python3"),
                             emulation.EMULATED_VARIABLE: "aarch64 qemu-7.2.22 cpu=neoverse-n1"},
                        unset=emulation.HOST_ONLY_VARIABLES)
    host = {"OPENBLAS_CORETYPE": "Haswell", "ATEN_CPU_CAPABILITY": "avx2", "PYTHONPATH": "/venv/site-packages",
            "HOME": "/root", "OMP_NUM_THREADS": "2"}
    env = emulation.environment(prepared, tmp_path / "site", {"OPENBLAS_CORETYPE": "NEOVERSEN1"}, ["OMP_NUM_THREADS"],
                                base=host)
    assert env["PYTHONPATH"] == os.pathsep.join([str(tmp_path / "site"), str(tmp_path / "src")])
    assert env["OPENBLAS_CORETYPE"] == "NEOVERSEN1"  # the profile's own value wins over the removal
    assert "ATEN_CPU_CAPABILITY" not in env and "OMP_NUM_THREADS" not in env
    assert env["HOME"] == "/root" and env["DETHARNESS_WORKER_PYTHON"] == str(tmp_path / "bin/python3")
    assert prepared.label == "aarch64 qemu-7.2.22 cpu=neoverse-n1"


def test_the_source_folder_holds_only_detharness(tmp_path: Path) -> None:
    folder = emulation.source_folder(tmp_path)
    assert [p.name for p in folder.iterdir()] == ["detharness"]
    assert (folder / "detharness").resolve() == ROOT / "detharness"
    assert emulation.source_folder(tmp_path) == folder  # reused


NUMPY_ONLY = """
    [matrix]
    keyword = "preprocessing/standardize or preprocessing/min_max_scale"
    backends = ["numpy"]
    device = "cpu"
    [profiles.host]
    [profiles.arm]
    emulate = "aarch64"
    cpu = "neoverse-n1"
"""


def test_a_profile_that_cannot_be_emulated_here_is_skipped_and_the_rest_go_on(tmp_path: Path) -> None:
    (tmp_path / "profiles.toml").write_text(textwrap.dedent(NUMPY_ONLY))
    (tmp_path / "no-debs").mkdir()
    done = run_cli("matrix", str(tmp_path / "profiles.toml"), "--out", str(tmp_path / "out"), "--format", "json",
                   env={emulation.DEBS_VARIABLE: str(tmp_path / "no-debs")}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    profiles = {p["name"]: p for p in report["profiles"]}
    assert profiles["host"]["status"] == "ok"
    assert profiles["arm"]["status"] == "skipped"
    assert "ci/setup-arm.sh" in profiles["arm"]["reason"]
    skipped = [r for r in report["results"] if r["check"] == "matrix"]
    assert [r["status"] for r in skipped] == ["skipped"]
    assert not (tmp_path / "out" / "arm").exists()


@pytest.mark.slow
@pytest.mark.skipif(aarch64_emulation_missing() is not None,
                    reason=f"no aarch64 emulation here: {aarch64_emulation_missing()}")
def test_a_numpy_only_aarch64_profile_runs_emulated_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "profiles.toml").write_text(textwrap.dedent(NUMPY_ONLY))
    out = tmp_path / "out"
    done = run_cli("matrix", str(tmp_path / "profiles.toml"), "--out", str(out), "--report", str(tmp_path / "m.md"),
                   "--report", str(tmp_path / "m.json"), timeout=900)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    report = json.loads((tmp_path / "m.json").read_text())
    profiles = {p["name"]: p for p in report["profiles"]}
    assert profiles["arm"]["status"] == "ok", profiles["arm"]
    label = profiles["arm"]["emulated"]
    assert label.startswith("aarch64 qemu-") and label.endswith("cpu=neoverse-n1")
    manifest = json.loads((out / "arm" / "manifest.json").read_text())
    environment = manifest["environment"]
    assert environment["machine.arch"] == "aarch64"
    assert environment["machine.emulated"] == label
    assert "ASIMD" in environment["numpy.simd.baseline"]
    assert environment.get("env.OPENBLAS_CORETYPE") is None  # the host's x86 value did not leak in
    host = json.loads((out / "host" / "manifest.json").read_text())["environment"]
    assert host["machine.arch"] == "x86_64" or host["machine.arch"] != "aarch64"
    assert host.get("machine.emulated") is None
    # every variant ran, in workers the emulated interpreter started through the launcher
    variants = manifest["variants"]
    assert variants and all(v["status"] == "ok" for v in variants.values()), variants
    assert set(variants) == set(json.loads((out / "host" / "manifest.json").read_text())["variants"])
    # no report lets an emulated environment pass for silicon
    assert "emulated aarch64" in done.stdout
    assert "emulated aarch64" in (tmp_path / "m.md").read_text()
    # the profile's reproduce line runs, pasted into a shell, emulated again
    again = subprocess.run(["bash", "-c", profiles["arm"]["command"] + " --replace"], capture_output=True, text=True,
                           timeout=600, cwd=Path.cwd())
    assert again.returncode in (0, 1), again.stderr[-2000:]
    assert json.loads((out / "arm" / "manifest.json").read_text())["environment"]["machine.emulated"] == label
