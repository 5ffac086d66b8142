"""detharness.matrix.emulation.cpu: HWCAP names, MIDR fields, /proc/cpuinfo and the sysfs tree, and the probe
run under the real emulator (skipped where qemu-aarch64-static or the arm64 packages are missing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detharness.matrix import emulation
from detharness.matrix.emulation import cpu as C
from detharness.matrix.emulation import sysroot
from detharness.matrix.emulation.cpu import (
    HWCAP2_NAMES,
    HWCAP_NAMES,
    KNOWN_MIDR,
    CpuDescription,
    CpuProbeError,
    cpuinfo_text,
    feature_bits,
    feature_names,
    probe,
    write_tree,
)
from tests.conftest import aarch64_emulation_missing

# What qemu-aarch64 7.2 reports for -cpu neoverse-n1 (the probe's answer on the machine this was
# written on): a Neoverse-N1 r4p1 without the evtstrm and ssbs HWCAPs real kernels show.
N1_HWCAP = 1155067
N1 = CpuDescription("neoverse-n1", 0x414FD0C1, N1_HWCAP, 0, count=2)
AARCH64 = emulation.ARCHES["aarch64"]
N1_FEATURES = ["fp", "asimd", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp", "asimdhp", "cpuid",
               "asimdrdm", "lrcpc", "dcpop", "asimddp"]


# -- names and fields -------------------------------------------------------------------------------


def test_kernel_names_at_their_bits() -> None:
    # arch/arm64/include/uapi/asm/hwcap.h
    assert HWCAP_NAMES.index("cpuid") == 11
    assert HWCAP_NAMES.index("sve") == 22
    assert HWCAP_NAMES.index("pacg") == 31
    assert HWCAP_NAMES.index("gcs") == 32
    assert HWCAP2_NAMES.index("sve2") == 1
    assert HWCAP2_NAMES.index("bf16") == 14
    assert HWCAP2_NAMES.index("sme") == 23
    assert HWCAP2_NAMES.index("smefa64") == 30
    assert HWCAP2_NAMES.index("wfxt") == 31
    assert HWCAP2_NAMES.index("lse128") == 47
    assert HWCAP2_NAMES.index("poe") == 63
    assert len(HWCAP2_NAMES) == 64
    names = HWCAP_NAMES + HWCAP2_NAMES
    assert len(set(names)) == len(names)
    assert all(name.isalnum() and name == name.lower() for name in names)


def test_features_of_known_bits_in_kernel_order() -> None:
    assert N1.features == tuple(N1_FEATURES)
    assert feature_names(0, 0) == ()
    # AT_HWCAP's names come first, then AT_HWCAP2's, each by bit
    assert feature_names((1 << 22) | 1, (1 << 1) | (1 << 14)) == ("fp", "sve", "sve2", "bf16")
    # a bit Linux has no name for is left out, as the kernel prints nothing for it
    assert feature_names(1 << 60, 1 << 1) == ("sve2",)


def test_feature_bits_rejects_unknown_names() -> None:
    assert feature_bits(N1_FEATURES) == (N1_HWCAP, 0)
    with pytest.raises(ValueError, match="'avx2' is not an arm64 HWCAP name"):
        feature_bits(["fp", "avx2"])


_KNOWN_HWCAP = (1 << len(HWCAP_NAMES)) - 1
_KNOWN_HWCAP2 = (1 << len(HWCAP2_NAMES)) - 1


@given(st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1))
def test_features_round_trip(hwcap: int, hwcap2: int) -> None:
    names = feature_names(hwcap, hwcap2)
    assert feature_bits(names) == (hwcap & _KNOWN_HWCAP, hwcap2 & _KNOWN_HWCAP2)
    assert len(names) == (hwcap & _KNOWN_HWCAP).bit_count() + (hwcap2 & _KNOWN_HWCAP2).bit_count()


def test_midr_fields() -> None:
    assert (N1.implementer, N1.variant, N1.architecture, N1.part, N1.revision) == (0x41, 4, 0xF, 0xD0C, 1)
    a64fx = CpuDescription("a64fx", KNOWN_MIDR["a64fx"], 0, 0, count=1)
    assert (a64fx.implementer, a64fx.variant, a64fx.part, a64fx.revision) == (0x46, 1, 0x001, 0)


@given(st.integers(0, 0xFF), st.integers(0, 0xF), st.integers(0, 0xF), st.integers(0, 0xFFF), st.integers(0, 0xF))
def test_midr_fields_decode_what_was_packed(implementer: int, variant: int, arch: int, part: int, revision: int) -> None:
    midr = implementer << 24 | variant << 20 | arch << 16 | part << 4 | revision
    cpu = CpuDescription("max", midr, 0, 0, count=1)
    assert (cpu.implementer, cpu.variant, cpu.architecture, cpu.part, cpu.revision) == (
        implementer, variant, arch, part, revision)


def test_description_checks_its_values() -> None:
    assert CpuDescription("neoverse-n1", 1, 0, 0).count == len(os.sched_getaffinity(0))
    for bad in ({"model": "max,sve=on"}, {"model": ""}, {"midr": -1}, {"hwcap": 1 << 64}, {"count": 0},
                {"count": True}, {"hwcap2": 1.0}):
        values = {"model": "neoverse-n1", "midr": 1, "hwcap": 0, "hwcap2": 0, "count": 1, **bad}
        with pytest.raises(ValueError):
            CpuDescription(**values)  # type: ignore[arg-type]


def test_json_round_trip() -> None:
    data = json.loads(json.dumps(N1.to_json()))
    assert data["features"] == N1_FEATURES
    assert data["midr_hex"] == "0x414fd0c1"
    assert CpuDescription.from_json(data) == N1
    with pytest.raises(ValueError, match="needs count"):
        CpuDescription.from_json({"model": "max", "midr": 1, "hwcap": 0, "hwcap2": 0})


# -- /proc/cpuinfo and sysfs ------------------------------------------------------------------------


def test_cpuinfo_text_is_the_kernels_format() -> None:
    block = ("BogoMIPS\t: 50.00\n"
             f"Features\t: {' '.join(N1_FEATURES)}\n"
             "CPU implementer\t: 0x41\n"
             "CPU architecture: 8\n"
             "CPU variant\t: 0x4\n"
             "CPU part\t: 0xd0c\n"
             "CPU revision\t: 1\n\n")
    assert cpuinfo_text(N1) == f"processor\t: 0\n{block}processor\t: 1\n{block}"
    # no features: "Features\t:" and nothing after; part and implementer keep their widths
    bare = cpuinfo_text(CpuDescription("max", 0x000F0510, 0, 0, count=1))
    assert "Features\t:\n" in bare
    assert "CPU implementer\t: 0x00\n" in bare
    assert "CPU part\t: 0x051\n" in bare


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_tree(tmp_path: Path) -> None:
    cpu = CpuDescription("cortex-a72", KNOWN_MIDR["cortex-a72"], 2299, 0, count=6)
    write_tree(tmp_path, cpu)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proc", "sys"]
    assert sorted(p.name for p in (tmp_path / "proc").iterdir()) == ["cpuinfo"]
    files = _files(tmp_path)
    assert files["proc/cpuinfo"] == cpuinfo_text(cpu)
    base = "sys/devices/system/cpu"
    assert all(name.startswith(f"{base}/") or name == "proc/cpuinfo" for name in files)
    for name in ("online", "possible", "present"):
        assert files[f"{base}/{name}"] == "0-5\n"
    assert files[f"{base}/offline"] == "\n"
    assert files[f"{base}/kernel_max"] == "255\n"
    assert sorted(p.name for p in (tmp_path / base).glob("cpu*")) == [f"cpu{n}" for n in range(6)]
    cpu5 = f"{base}/cpu5"
    assert files[f"{cpu5}/regs/identification/midr_el1"] == "0x00000000410fd083\n"
    assert files[f"{cpu5}/regs/identification/revidr_el1"] == "0x0000000000000000\n"
    topology = {name.rsplit("/", 1)[1]: text for name, text in files.items() if name.startswith(f"{cpu5}/topology/")}
    assert topology == {
        "core_id": "5\n", "cluster_id": "1\n", "physical_package_id": "0\n",
        "thread_siblings": "20\n", "thread_siblings_list": "5\n", "core_cpus": "20\n", "core_cpus_list": "5\n",
        "cluster_cpus": "30\n", "cluster_cpus_list": "4-5\n",  # Cortex-A72s come in clusters of 4
        "core_siblings": "3f\n", "core_siblings_list": "0-5\n", "package_cpus": "3f\n", "package_cpus_list": "0-5\n",
    }  # fmt: skip
    caches = {}
    for index in range(4):
        entry = f"{cpu5}/cache/index{index}"
        caches[index] = tuple(files[f"{entry}/{name}"].strip() for name in (
            "level", "type", "size", "ways_of_associativity", "number_of_sets", "coherency_line_size",
            "shared_cpu_list", "shared_cpu_map"))
    assert caches == {
        0: ("1", "Data", "32K", "2", "256", "64", "5", "20"),
        1: ("1", "Instruction", "48K", "3", "256", "64", "5", "20"),
        2: ("2", "Unified", "1024K", "16", "1024", "64", "4-5", "30"),
        3: ("3", "Unified", "4096K", "16", "4096", "64", "0-5", "3f"),
    }
    assert not (tmp_path / base / "cpu0" / "cache" / "index4").exists()


def test_write_tree_replaces_an_earlier_tree(tmp_path: Path) -> None:
    (tmp_path / "usr").mkdir()
    write_tree(tmp_path, CpuDescription("neoverse-n1", KNOWN_MIDR["neoverse-n1"], N1_HWCAP, 0, count=4))
    write_tree(tmp_path, N1)
    base = tmp_path / "sys/devices/system/cpu"
    assert sorted(p.name for p in base.glob("cpu*")) == ["cpu0", "cpu1"]
    assert (base / "online").read_text() == "0-1\n"
    assert (base / "cpu1/cache/index3/shared_cpu_map").read_text() == "3\n"
    assert (base / "cpu1/cache/index2/shared_cpu_list").read_text() == "1\n"  # N1: a private L2 per core
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proc", "sys", "usr"]
    with pytest.raises(FileNotFoundError):
        write_tree(tmp_path / "missing", N1)


@pytest.mark.parametrize(("cpus", "bits", "mask", "listed"), [
    ([0], 1, "1", "0"),
    ([0, 1], 2, "3", "0-1"),
    ([3], 8, "08", "3"),
    ([0, 1, 2, 5, 7, 8], 12, "1a7", "0-2,5,7-8"),
    ([0], 32, "00000001", "0"),
    ([0, 1], 64, "00000000,00000003", "0-1"),
    ([32, 33, 34, 35, 40], 48, "010f,00000000", "32-35,40"),
])  # fmt: skip
def test_cpu_masks_and_lists(cpus: list[int], bits: int, mask: str, listed: str) -> None:
    assert C._cpumask(cpus, bits) == mask
    assert C._cpulist(cpus) == listed


@pytest.mark.parametrize("model", [*sorted(KNOWN_MIDR), "max", "some-future-cpu"])
def test_cache_tables_are_consistent(model: str) -> None:
    levels, cluster = C.cache_levels(model)
    assert [(c.level, c.type) for c in levels] == [(1, "Data"), (1, "Instruction"), (2, "Unified"), (3, "Unified")]
    assert cluster >= 1
    for cache in levels:
        assert cache.sets * cache.ways * cache.line == cache.size_kib * 1024
        assert cache.shared in ("core", "cluster", "all")


# -- the probe, without an emulator -----------------------------------------------------------------


def _fake(tmp_path: Path, body: str) -> list[str]:
    """A host command standing in for the emulator: a Python script that ignores ``-c PROBE``."""
    script = tmp_path / "fake.py"
    script.write_text(body)
    return [sys.executable, str(script)]


def test_probe_parses_the_answer_and_falls_back_to_known_midr(tmp_path: Path) -> None:
    argv = _fake(tmp_path, 'print("warming up")\n'
                           'print(\'{"machine": "aarch64", "hwcap": 2299, "hwcap2": 0, "midr": null}\')\n')
    cpu = probe([*argv, "-cpu", "cortex-a72,pauth=off"], count=3)
    assert cpu == CpuDescription("cortex-a72", KNOWN_MIDR["cortex-a72"], 2299, 0, count=3)
    # the model: -cpu, else $QEMU_CPU, else QEMU's default, max (which only the probe can identify)
    assert probe(argv, env={**os.environ, "QEMU_CPU": "a64fx"}).model == "a64fx"
    with pytest.raises(CpuProbeError, match="could not read MIDR_EL1 of 'max'"):
        probe(argv, env={k: v for k, v in os.environ.items() if k != "QEMU_CPU"})


def test_probe_errors_are_one_line(tmp_path: Path) -> None:
    cases = {
        "import sys; sys.stderr.write('qemu: could not open\\nELF interpreter missing\\n'); sys.exit(1)":
            "exited with 1: ELF interpreter missing",
        "print('nothing useful')": "printed no answer: nothing useful",
        "print('{\"machine\": \"x86_64\", \"hwcap\": 0, \"hwcap2\": 0, \"midr\": null}')": "runs a 'x86_64' Python",
    }  # fmt: skip
    for body, message in cases.items():
        with pytest.raises(CpuProbeError, match=message) as caught:
            probe(_fake(tmp_path, body), timeout=60)
        assert "\n" not in str(caught.value)
    with pytest.raises(CpuProbeError, match=r"did not answer within 0\.3s"):
        probe(_fake(tmp_path, "import time; time.sleep(30)"), timeout=0.3)
    with pytest.raises(CpuProbeError, match="cannot run /nonexistent/qemu"):
        probe(["/nonexistent/qemu", "-L", "/x"])
    with pytest.raises(CpuProbeError, match="no command"):
        probe([])


# -- under the real emulator ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def arm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Debian's arm64 python3.11 and its libraries, unpacked as a matrix unpacks them, into a folder of
    this session's own."""
    missing = aarch64_emulation_missing()
    if missing is not None:
        pytest.skip(f"no aarch64 emulation here: {missing}")
    return sysroot.ensure_sysroot(AARCH64, emulation.debs_folder(), tmp_path_factory.mktemp("arm"))


def _emulated(root: Path, model: str) -> list[str]:
    return sysroot.emulated_python(emulation.find_emulator(AARCH64), root, model, AARCH64)


def _clean_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONNOUSERSITE": "1", "LC_ALL": "C.UTF-8"}


@pytest.mark.slow
def test_probe_neoverse_n1(arm_root: Path) -> None:
    cpu = probe(_emulated(arm_root, "neoverse-n1"), env=_clean_env())
    assert cpu.model == "neoverse-n1"
    assert {"fp", "asimd", "cpuid", "atomics", "asimddp"} <= set(cpu.features)
    assert "sve" not in cpu.features
    assert (cpu.implementer, cpu.part) == (0x41, 0xD0C)
    assert cpu.midr == KNOWN_MIDR["neoverse-n1"]  # the table holds what the emulator reports


@pytest.mark.slow
def test_probe_a64fx(arm_root: Path) -> None:
    cpu = probe(_emulated(arm_root, "a64fx"), env=_clean_env())
    assert "sve" in cpu.features
    assert (cpu.implementer, cpu.part) == (0x46, 0x001)
    assert cpu.midr == KNOWN_MIDR["a64fx"]


@pytest.mark.slow
def test_emulated_python_reads_the_tree(arm_root: Path) -> None:
    # 3 CPUs, not the host's count: the emulated glibc must count them from the fake /sys
    cpu = CpuDescription("neoverse-n1", KNOWN_MIDR["neoverse-n1"], N1_HWCAP, 0, count=3)
    write_tree(arm_root, cpu)
    reader = (
        "import json, os\n"
        "base = '/sys/devices/system/cpu'\n"
        "print(json.dumps({'cpuinfo': open('/proc/cpuinfo').read(),\n"
        "    'midr': open(base + '/cpu2/regs/identification/midr_el1').read(),\n"
        "    'l3': open(base + '/cpu0/cache/index3/size').read(),\n"
        "    'cpus': sorted(n for n in os.listdir(base) if n[3:].isdigit()),\n"
        "    'count': os.cpu_count()}))\n"
    )
    try:
        done = subprocess.run([*_emulated(arm_root, "neoverse-n1"), "-c", reader], capture_output=True, text=True,
                              timeout=120, env=_clean_env(), check=False)
    finally:
        shutil.rmtree(arm_root / "proc")
        shutil.rmtree(arm_root / "sys")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["cpuinfo"] == cpuinfo_text(cpu)
    assert "CPU part\t: 0xd0c\n" in seen["cpuinfo"]
    assert seen["midr"] == "0x00000000414fd0c1\n"
    assert seen["l3"] == "32768K\n"
    assert seen["cpus"] == ["cpu0", "cpu1", "cpu2"]
    assert seen["count"] == 3
