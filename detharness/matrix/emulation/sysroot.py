"""The folders an emulated interpreter runs in, built in detharness's cache and reused by stamp.

* ``sysroot-<digest>/``: Debian's arm64 packages (python3.11 and the libraries it links) extracted
  with ``dpkg-deb -x`` and the standard library precompiled by the host (the emulated Python would
  otherwise recompile every module it imports, in emulation, when bytecode writing is off).
* ``cpu-<model>-<digest>/root/``: what ``-L`` points at for one CPU model: a link to each of the
  sysroot's top-level folders, plus ``proc/cpuinfo`` and ``sys/devices/system/cpu`` describing
  that model; and ``cpu-<model>-<digest>/bin/python3``, the host-side launcher of the emulator.

Every folder is built as the version overlays are (:func:`detharness.matrix.overlays.building` and
``publish``): under a temporary name, renamed into place once complete and stamped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from detharness.compare.scan import available_cores
from detharness.matrix.emulation import EMULATED_VARIABLE, Arch, Emulator, Unavailable, stamp_matches, write_stamp
from detharness.matrix.emulation.cpu import CpuDescription
from detharness.matrix.overlays import SetupError, building, publish

#: Which top-level folders of the extracted packages the emulated process may see through ``-L``.
#: Anything else (``tmp``, ``home``, ``root``, ``var``...) would hide the host's folder of that name
#: from the emulated process, the run's own files among them.
KEPT_TOP_LEVEL = ("usr", "lib", "etc", "bin", "sbin")
CPU_STAMP = ".detharness-cpu.json"
EXTRACT_TIMEOUT = 600.0
COMPILE_TIMEOUT = 1800.0


def _digest(key: object) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def find_debs(folder: Path, target: Arch) -> list[Path]:
    if not folder.is_dir():
        raise Unavailable(f"no {target.debian} packages in {folder}; fetch them with ci/setup-arm.sh (as root)")
    debs = sorted(p for p in folder.glob("*.deb") if p.is_file())
    pythons = [p for p in debs if p.name.startswith("python3.11-minimal_") and f"_{target.debian}.deb" in p.name]
    if not pythons:
        raise Unavailable(f"no {target.debian} python3.11-minimal package in {folder}; fetch them with "
                          "ci/setup-arm.sh (as root)")
    return debs


def ensure_sysroot(target: Arch, debs_folder: Path, cache: Path, *, python: str = sys.executable,
                   log: Callable[[str], None] = lambda _: None) -> Path:
    """The extracted, precompiled root folder of ``target``'s Python (built now or reused)."""

    debs = find_debs(debs_folder, target)
    if shutil.which("dpkg-deb") is None:
        raise Unavailable("dpkg-deb (Debian's dpkg) is needed to unpack the arm64 packages")
    key = {"arch": target.name, "debs": [[p.name, p.stat().st_size] for p in debs], "layout": 1}
    final = cache / f"sysroot-{target.name}-{_digest(key)}"
    if stamp_matches(final, key):
        return final
    log(f"unpacking {len(debs)} {target.debian} packages into {final}")
    with building(final) as temp:
        for deb in debs:
            done = subprocess.run(["dpkg-deb", "-x", str(deb), str(temp)], capture_output=True, text=True,
                                  check=False, timeout=EXTRACT_TIMEOUT)
            if done.returncode != 0:
                raise SetupError(f"dpkg-deb -x {deb.name} failed: {done.stderr.strip()[-300:]}")
        for entry in temp.iterdir():
            if entry.name not in KEPT_TOP_LEVEL:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        _relative_links(temp)
        # Debian's interpreter also looks in these; empty here, they hide the host's (x86) copies.
        for extra in ("usr/local/lib/python3.11/dist-packages", "usr/lib/python3/dist-packages"):
            (temp / extra).mkdir(parents=True, exist_ok=True)
        if not (temp / target.python).is_file():
            raise SetupError(f"the packages in {debs_folder} hold no {target.python}")
        compile_tree(temp / "usr/lib/python3.11", python=python)
        write_stamp(temp, key)
        publish(temp, final, lambda: stamp_matches(final, key))
    return final


def _relative_links(root: Path) -> None:
    """Make every absolute symbolic link under ``root`` relative: ``-L`` resolves a path inside the
    root folder, but the host kernel follows an absolute link to the host's own file."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            path = Path(dirpath) / name
            if not path.is_symlink():
                continue
            target = os.readlink(path)
            if os.path.isabs(target):
                relative = os.path.relpath(root / target.lstrip("/"), path.parent)
                path.unlink()
                path.symlink_to(relative)


def compile_tree(folder: Path, *, python: str = sys.executable) -> None:
    """Write bytecode for ``folder`` with the host's interpreter, where it is the same Python minor
    version (bytecode is portable across architectures; its magic number changes per minor)."""

    info = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2] == (3, 11))"],
                          capture_output=True, text=True, check=False, timeout=60)
    if info.stdout.strip() != "True":
        return  # the emulated Python compiles on import instead (slower, same results)
    done = subprocess.run([python, "-m", "compileall", "-q", "-j", "0", str(folder)], capture_output=True,
                          text=True, check=False, timeout=COMPILE_TIMEOUT)
    if done.returncode not in (0, 1):  # 1: a file that does not compile (test data in some packages)
        raise SetupError(f"python -m compileall {folder} failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")


def emulated_python(emulator: Emulator, root: Path, model: str, target: Arch) -> list[str]:
    """The command line that starts the emulated interpreter."""
    return [emulator.path, "-L", str(root), "-cpu", model, str(root / target.python)]


def ensure_cpu_root(target: Arch, emulator: Emulator, model: str, sysroot: Path, cache: Path, *,
                    log: Callable[[str], None] = lambda _: None) -> tuple[Path, CpuDescription]:
    """The ``-L`` root folder for one CPU model: the sysroot's folders plus that model's
    ``/proc/cpuinfo`` and ``/sys/devices/system/cpu``, described from what QEMU exposes; and that
    description. A folder whose stamp holds no readable description is built again."""
    from detharness.matrix.emulation import cpu as cpu_mod

    count = available_cores()
    key = {"sysroot": sysroot.name, "emulator": [emulator.path, emulator.version], "cpu": model, "count": count,
           "layout": 1}
    final = cache / f"cpu-{target.name}-{model}-{_digest(key)}"
    root = final / "root"
    if stamp_matches(root, key, CPU_STAMP):
        try:
            return root, cpu_mod.CpuDescription.from_json(json.loads((root / CPU_STAMP).read_text())["cpu"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a stamp without its description: describe the CPU again
    log(f"describing the emulated {model} CPU for {final}")
    with building(final) as temp:
        (temp / "root").mkdir()
        for entry in sysroot.iterdir():
            if entry.name in KEPT_TOP_LEVEL:
                (temp / "root" / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
        try:
            quiet = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
            described = cpu_mod.probe(emulated_python(emulator, temp / "root", model, target), env=quiet,
                                      count=count, model=model)
        except cpu_mod.CpuProbeError as exc:
            raise SetupError(f"could not read the emulated {model} CPU's features: {exc}") from None
        cpu_mod.write_tree(temp / "root", described)
        write_stamp(temp / "root", key, CPU_STAMP, cpu=described.to_json())
        publish(temp, final, lambda: stamp_matches(root, key, CPU_STAMP))
    return root, described


def write_launcher(path: Path, emulator: Emulator, model: str, root: Path, target: Arch, label: str) -> None:
    """The host-side script that starts the emulated interpreter with its arguments: what the
    profile's ``detharness run`` is started with, and what it starts its workers with."""
    command = " ".join(shlex.quote(part) for part in emulated_python(emulator, root, model, target))
    text = (
        "#!/bin/sh\n"
        f"# Written by detharness: {target.name} Python under QEMU user-mode emulation ({emulator.short}, "
        f"cpu {model}).\n"
        f"{EMULATED_VARIABLE}={shlex.quote(label)}\n"
        f"export {EMULATED_VARIABLE}\n"
        f'exec {command} "$@"\n'
    )
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}-{os.getpid()}")
    temp.write_text(text)
    temp.chmod(0o755)
    os.replace(temp, path)

