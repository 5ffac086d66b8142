"""Emulated architectures: an aarch64 environment of ``detharness matrix`` on an x86 machine.

A model trained on x86 is often served on ARM (Graviton, Ampere, Apple silicon), and ARM builds of
numpy, torch, ONNX Runtime and XLA choose other kernels and round differently. QEMU's user-mode
emulation runs the *real* aarch64 wheels from PyPI on an x86 host: a matrix profile with
``emulate = "aarch64"`` runs its ``detharness run`` under ``qemu-aarch64-static``, inside an
aarch64 CPython taken from Debian's arm64 packages.

What a profile needs, and who provides it:

* **The emulator and the arm64 packages** are installed by ``ci/setup-arm.sh`` (root, apt-get): an
  explicit step, never something detharness does to a machine on its own. Where either is missing,
  the profile is skipped with the reason and that command; the rest of the matrix goes on.
* **The root folder** (:mod:`.sysroot`): the downloaded packages extracted into detharness's cache
  and precompiled, reused while its stamp (the packages' names and sizes) matches. ``-L ROOT``
  makes the emulated process see ROOT's copy of any absolute path that exists there.
* **The CPU description** (:mod:`.cpu`): ``/proc/cpuinfo`` and ``/sys/devices/system/cpu`` as
  Linux writes them for the emulated CPU model, from the HWCAPs and MIDR that QEMU really exposes.
  Without it ``import torch`` crashes on the host's x86 ``/proc/cpuinfo``, and XLA compiles for
  features the emulated CPU does not have.
* **The wheels**: the profile's exact pins, downloaded for ``manylinux_*_aarch64`` by the host's
  pip into an overlay of their own (:func:`detharness.matrix.overlays.ensure_overlay`).
* **A launcher** on the host: a shell script that execs the emulator. The emulated Python cannot
  start a subprocess of itself (no binfmt_misc), so its worker processes are started through the
  launcher (``DETHARNESS_WORKER_PYTHON``, see :func:`detharness.runner.worker_python`).

The launcher sets ``DETHARNESS_EMULATED`` (``aarch64 qemu-7.2.22 cpu=neoverse-n1``), which the
fingerprint records as ``machine.emulated``: no report can mistake an emulated environment for
silicon. Emulation shows what real Linux aarch64 builds compute under a given CPU model (kernel
choice and rounding); it says nothing about speed, about macOS on Apple silicon, or about what
QEMU itself may not model (SVE/SME and flush-to-zero corners). A real ARM runner is the proof.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detharness.runner import WORKER_PYTHON_VARIABLE

#: Set by the launcher: what is emulated, by what, as which CPU. The fingerprint's ``machine.emulated``.
EMULATED_VARIABLE = "DETHARNESS_EMULATED"
#: Where ``ci/setup-arm.sh`` leaves the arm64 packages it downloaded.
DEBS_VARIABLE = "DETHARNESS_ARM_DEBS"
DEFAULT_DEBS = "/var/cache/detharness/arm64-debs"
SETUP_COMMAND = "ci/setup-arm.sh (as root: installs qemu-user-static and downloads Debian's arm64 Python)"
#: Variables of the host that would mislead the emulated libraries: an x86 OPENBLAS_CORETYPE makes
#: ARM OpenBLAS fall back to generic armv8 kernels without a word. A profile may set them itself.
HOST_ONLY_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "ATEN_CPU_CAPABILITY", "XLA_FLAGS",
                       WORKER_PYTHON_VARIABLE, "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
STAMP = ".detharness-emulation.json"


@dataclass(frozen=True)
class Arch:
    """An architecture detharness can emulate."""

    name: str
    emulators: tuple[str, ...]
    debian: str
    python: str
    platforms: tuple[str, ...]
    default_cpu: str

    def pip_target_args(self) -> list[str]:
        """pip's options for wheels of this architecture and Debian's CPython 3.11."""
        args = ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--abi", "abi3",
                "--abi", "none"]
        for tag in self.platforms:
            args += ["--platform", tag]
        return args


# Several manylinux tags are needed: PyPI's wheels for one release carry different ones (torch's nccl
# pin resolves only under 2_18, cupti only under 2_25). Debian bookworm's glibc is 2.36.
ARCHES: dict[str, Arch] = {
    "aarch64": Arch(
        name="aarch64", emulators=("qemu-aarch64-static", "qemu-aarch64"), debian="arm64",
        python="usr/bin/python3.11",
        platforms=("manylinux2014_aarch64", *(f"manylinux_2_{minor}_aarch64" for minor in range(17, 37)),
                   "linux_aarch64"),
        default_cpu="neoverse-n1"),
}

#: What detharness imports in every process: an emulated site gets these at the host's versions
#: unless the profile pins them.
RUNTIME_REQUIREMENTS = ("numpy", "ml_dtypes", "tabulate", "threadpoolctl")


class Unavailable(Exception):
    """Emulation cannot run here (no emulator, no packages): the profile is skipped, saying why."""


@dataclass(frozen=True)
class Emulator:
    path: str
    version: str

    @property
    def short(self) -> str:
        return f"qemu-{self.version}"


@dataclass
class Prepared:
    """An emulated interpreter ready to run ``detharness``: how to start it and with what."""

    arch: str
    cpu: str
    emulator: Emulator
    root: Path
    launcher: Path
    #: Variables to set for the profile's process (its workers inherit them).
    env: dict[str, str] = field(default_factory=dict)
    #: Host variables to remove.
    unset: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``aarch64 qemu-7.2.22 cpu=neoverse-n1``: the value of ``machine.emulated``."""
        return f"{self.arch} {self.emulator.short} cpu={self.cpu}"


def arch(name: str) -> Arch:
    try:
        return ARCHES[name]
    except KeyError:
        raise ValueError(f"cannot emulate {name!r}; choose from {', '.join(ARCHES)}") from None


def find_emulator(target: Arch) -> Emulator:
    """The QEMU user-mode emulator for ``target`` on this machine, or :class:`Unavailable`."""
    for name in target.emulators:
        path = shutil.which(name)
        if path:
            break
    else:
        raise Unavailable(f"no {target.emulators[0]} on this machine; set it up with {SETUP_COMMAND}")
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unavailable(f"{path} does not start: {exc}") from None
    match = re.search(r"version\s+([0-9][0-9.]*)", done.stdout)
    if done.returncode != 0 or match is None:
        raise Unavailable(f"{path} --version did not say its version (exit {done.returncode})")
    return Emulator(path=path, version=match.group(1))


def debs_folder() -> Path:
    return Path(os.environ.get(DEBS_VARIABLE) or DEFAULT_DEBS)


def source_folder(cache: Path) -> Path:
    """A folder holding only ``detharness`` (a link to this package): what the emulated Python puts
    on its path. The package's own parent may be a virtual environment's site-packages, whose x86
    wheels the emulated interpreter must never see."""
    import detharness

    package = Path(detharness.__file__).resolve().parent
    folder = cache / "src" / hashlib.sha256(str(package).encode()).hexdigest()[:16]
    link = folder / "detharness"
    if link.is_symlink() and Path(os.readlink(link)) == package:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".detharness-{os.getpid()}"
    temp.unlink(missing_ok=True)
    temp.symlink_to(package, target_is_directory=True)
    os.replace(temp, link)
    return folder


def host_versions(names: Sequence[str]) -> dict[str, str]:
    """The versions of ``names`` installed here (for an emulated site's defaults)."""
    from importlib import metadata

    from detharness.matrix.profiles import _normalize

    installed = {_normalize(d.metadata["Name"] or ""): d.version for d in metadata.distributions()}
    return {name: installed[key] for name in names if (key := _normalize(name)) in installed}


def check_available(arch_name: str) -> Emulator:
    """The emulator, or :class:`Unavailable` now, before any download, where this machine cannot emulate."""
    from detharness.matrix.emulation import sysroot

    target = arch(arch_name)
    emulator = find_emulator(target)
    sysroot.find_debs(debs_folder(), target)
    return emulator


def prepare(arch_name: str, cpu: str | None, cache: Path, *, log: Callable[[str], None] = lambda _: None,
            python: str = sys.executable, emulator: Emulator | None = None) -> Prepared:
    """The emulated interpreter of an emulated profile, built now or reused from ``cache``.

    Raises :class:`Unavailable` where this machine cannot emulate (the profile is then skipped) and
    :class:`detharness.matrix.overlays.SetupError` where it could but building failed. The wheels are the
    caller's (:func:`environment` puts them on the path). ``emulator``: the one
    :func:`check_available` found (default: look for it).
    """
    from detharness.matrix.emulation import sysroot

    target = arch(arch_name)
    model = cpu or target.default_cpu
    emulator = emulator or find_emulator(target)
    base = sysroot.ensure_sysroot(target, debs_folder(), cache, python=python, log=log)
    root, described = sysroot.ensure_cpu_root(target, emulator, model, base, cache, log=log)
    prepared = Prepared(arch=target.name, cpu=model, emulator=emulator, root=root,
                        launcher=root.parent / "bin" / "python3", unset=HOST_ONLY_VARIABLES)
    sysroot.write_launcher(prepared.launcher, emulator, model, root, target, prepared.label)
    prepared.env = {
        "PYTHONPATH": str(source_folder(cache)),
        "PYTHONNOUSERSITE": "1",
        WORKER_PYTHON_VARIABLE: str(prepared.launcher),
        EMULATED_VARIABLE: prepared.label,
    }
    prepared.notes = [f"emulated {prepared.label}: features {' '.join(described.features)}"]
    return prepared


def environment(prepared: Prepared, site: Path, profile_env: Mapping[str, str], profile_unset: Sequence[str],
                base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of an emulated profile's process: the host's, minus what would mislead the
    emulated libraries (unless the profile sets it), plus the emulation's, plus the profile's; the
    wheels of ``site`` first on the path, then detharness itself (never the host's site-packages)."""
    env = dict(os.environ if base is None else base)
    for variable in (*prepared.unset, *profile_unset):
        env.pop(variable, None)
    env.update(prepared.env)
    env["PYTHONPATH"] = os.pathsep.join([str(site), prepared.env["PYTHONPATH"]])
    env.update(profile_env)
    return env


def stamp_matches(folder: Path, key: Mapping[str, Any], name: str = STAMP) -> bool:
    try:
        stamp = json.loads((folder / name).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(stamp, dict) and stamp.get("key") == json.loads(json.dumps(key))


def write_stamp(folder: Path, key: Mapping[str, Any], name: str = STAMP, **extra: Any) -> None:
    (folder / name).write_text(json.dumps({"key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra},
                                          indent=2, sort_keys=True) + "\n")
