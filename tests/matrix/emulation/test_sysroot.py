"""detharness.matrix.emulation.sysroot: the launcher, absolute links made relative, and the one-line reasons
a machine cannot emulate (no packages), without starting the emulator."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from detharness.matrix import emulation
from detharness.matrix.emulation import Emulator, Unavailable, sysroot
from tests.conftest import aarch64_emulation_missing


def test_absolute_links_inside_the_root_become_relative(tmp_path: Path) -> None:
    (tmp_path / "lib/aarch64-linux-gnu").mkdir(parents=True)
    (tmp_path / "lib/aarch64-linux-gnu/ld-linux-aarch64.so.1").write_text("loader")
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "lib/ld-linux-aarch64.so.1").symlink_to("/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1")
    (tmp_path / "usr/bin/python3").symlink_to("python3.11")  # relative: left alone
    sysroot._relative_links(tmp_path)
    assert os.readlink(tmp_path / "lib/ld-linux-aarch64.so.1") == "aarch64-linux-gnu/ld-linux-aarch64.so.1"
    assert (tmp_path / "lib/ld-linux-aarch64.so.1").read_text() == "loader"
    assert os.readlink(tmp_path / "usr/bin/python3") == "python3.11"


def test_the_launcher_execs_the_emulator_with_its_arguments_and_says_it_is_emulated(tmp_path: Path) -> None:
    fake = tmp_path / "qemu"
    fake.write_text('#!/bin/sh\nprintf "%s|" "$DETHARNESS_EMULATED" "$@"\n')
    fake.chmod(0o755)
    root = tmp_path / "a root with spaces"
    launcher = tmp_path / "bin/python3"
    target = emulation.ARCHES["aarch64"]
    sysroot.write_launcher(launcher, Emulator(str(fake), "7.2.22"), "neoverse-n1", root, target,
                           "aarch64 qemu-7.2.22 cpu=neoverse-n1")
    assert os.access(launcher, os.X_OK)
    done = subprocess.run([str(launcher), "-c", "print('it''s')"], capture_output=True, text=True, check=True)
    assert done.stdout.split("|")[:-1] == ["aarch64 qemu-7.2.22 cpu=neoverse-n1", "-L", str(root), "-cpu",
                                           "neoverse-n1", str(root / "usr/bin/python3.11"), "-c", "print('it''s')"]
    before = launcher.stat().st_mtime_ns
    sysroot.write_launcher(launcher, Emulator(str(fake), "7.2.22"), "neoverse-n1", root, target,
                           "aarch64 qemu-7.2.22 cpu=neoverse-n1")
    assert launcher.stat().st_mtime_ns == before  # unchanged: not rewritten under a running matrix


def test_no_packages_is_a_reason_with_the_setup_command(tmp_path: Path) -> None:
    target = emulation.ARCHES["aarch64"]
    with pytest.raises(Unavailable, match=r"ci/setup-arm\.sh"):
        sysroot.find_debs(tmp_path / "missing", target)
    (tmp_path / "libc6_2.36_arm64.deb").write_bytes(b"")
    with pytest.raises(Unavailable, match=r"no arm64 python3\.11-minimal package"):
        sysroot.find_debs(tmp_path, target)


def test_an_emulated_site_asks_pip_for_aarch64_wheels_of_debians_python() -> None:
    args = emulation.ARCHES["aarch64"].pip_target_args()
    assert args[:2] == ["--python-version", "3.11"]
    platforms = [args[i + 1] for i, a in enumerate(args) if a == "--platform"]
    assert "manylinux_2_17_aarch64" in platforms and "manylinux_2_36_aarch64" in platforms
    assert "manylinux_2_37_aarch64" not in platforms  # Debian bookworm's glibc is 2.36


@pytest.mark.slow
@pytest.mark.skipif(aarch64_emulation_missing() is not None,
                    reason=f"no aarch64 emulation here: {aarch64_emulation_missing()}")
def test_the_root_folders_are_reused_by_stamp_and_a_stamp_without_its_description_is_rebuilt(tmp_path: Path) -> None:
    target = emulation.ARCHES["aarch64"]
    emulator = emulation.find_emulator(target)
    base = sysroot.ensure_sysroot(target, emulation.debs_folder(), tmp_path)
    assert sysroot.ensure_sysroot(target, emulation.debs_folder(), tmp_path) == base  # reused
    assert {p.name for p in base.iterdir() if not p.name.startswith(".")} <= set(sysroot.KEPT_TOP_LEVEL)
    root, described = sysroot.ensure_cpu_root(target, emulator, "cortex-a72", base, tmp_path)
    assert described.part == 0xD08 and (root / "proc/cpuinfo").read_text().count("processor") == described.count
    stamp = root / sysroot.CPU_STAMP
    stamp.write_text(stamp.read_text().replace('"cpu"', '"not-the-cpu"'))  # a stamp from elsewhere
    again, redescribed = sysroot.ensure_cpu_root(target, emulator, "cortex-a72", base, tmp_path)
    assert again == root and redescribed == described
    assert '"cpu"' in stamp.read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # nothing half-built is left
