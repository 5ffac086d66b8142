"""The CPU an emulated aarch64 process must see: its ``/proc/cpuinfo`` and ``/sys/devices/system/cpu``.

QEMU user mode (``qemu-aarch64-static -L ROOT -cpu MODEL``) emulates the instructions of a CPU model
but not the kernel's description of it: a guest that opens ``/proc/cpuinfo`` or lists
``/sys/devices/system/cpu`` reads the x86 host's files. Libraries that look there before they pick
their kernels then misbehave: ``import torch`` segfaults (pytorch/cpuinfo and oneDNN parse the x86
text), and XLA, OpenBLAS and oneDNN choose code for features the emulated CPU does not have, or
leave out features it has. With ``-L ROOT`` the guest sees ROOT's copy of any absolute path that
exists under ROOT, so :func:`write_tree` writes a description of the emulated CPU there:
``ROOT/proc/cpuinfo`` in the arm64 kernel's format and ``ROOT/sys/devices/system/cpu`` (the online,
possible and present lists, and per CPU its MIDR_EL1, topology and caches). Nothing else in ROOT is
created: ``-L`` would redirect any other top-level folder (``/tmp``, ``/home``) too.

What goes in is what QEMU really exposes, read from inside the emulated process by :data:`PROBE`
(run with :func:`probe` before the tree exists: Python starts without it): the HWCAP and HWCAP2
words of the auxiliary vector, which become the ``Features`` line with the kernel's names in the
kernel's order, and MIDR_EL1 (implementer, part, variant, revision), read with an ``mrs`` instruction
where the ``cpuid`` HWCAP allows it, else taken from :data:`KNOWN_MIDR`. Cache sizes and the
cluster layout come from a small table per model (the models' manuals, as QEMU's own CPU
definitions use them); QEMU does not expose them to user mode.

``-L`` redirects path by path: a file the tree lacks is read from the host. So every CPU gets four
cache entries (``index0`` to ``index3``), also a model whose silicon has no L3 (a nominal shared one
stands in), because a reader that probes ``index3`` would otherwise get the host's L3, and the
emulated environment would depend on the machine it runs on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from detharness.compare.scan import available_cores

__all__ = [
    "AT_HWCAP",
    "AT_HWCAP2",
    "HWCAP2_NAMES",
    "HWCAP_NAMES",
    "KNOWN_MIDR",
    "PROBE",
    "CacheLevel",
    "CpuDescription",
    "CpuProbeError",
    "cache_levels",
    "cpuinfo_text",
    "feature_bits",
    "feature_names",
    "probe",
    "write_tree",
]

#: getauxval() keys of the two hardware-capability words (linux/auxvec.h).
AT_HWCAP = 16
AT_HWCAP2 = 26
HWCAP_CPUID = 1 << 11

#: Linux's names for the AT_HWCAP bits, index = bit (arch/arm64/include/uapi/asm/hwcap.h and
#: ``hwcap_str`` in arch/arm64/kernel/cpuinfo.c, mainline up to ``smesmop4``). /proc/cpuinfo lists
#: the set bits of AT_HWCAP in this order, then those of AT_HWCAP2 (``hwcap_str`` is indexed by
#: bit, AT_HWCAP2's from 64 on).
HWCAP_NAMES: tuple[str, ...] = (
    "fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32",
    "atomics", "fphp", "asimdhp", "cpuid", "asimdrdm", "jscvt", "fcma", "lrcpc",
    "dcpop", "sha3", "sm3", "sm4", "asimddp", "sha512", "sve", "asimdfhm",
    "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb", "paca", "pacg",
    "gcs", "cmpbr", "fprcvt", "f8mm8", "f8mm4", "svef16mm", "sveeltperm", "sveaes2",
    "svebfscale", "sve2p2", "sme2p2", "smesbitperm", "smeaes", "smesfexpa", "smestmop", "smesmop4",
)  # fmt: skip

#: Linux's names for the AT_HWCAP2 bits, index = bit (same sources).
HWCAP2_NAMES: tuple[str, ...] = (
    "dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3", "svesm4", "flagm2",
    "frint", "svei8mm", "svef32mm", "svef64mm", "svebf16", "i8mm", "bf16", "dgh",
    "rng", "bti", "mte", "ecv", "afp", "rpres", "mte3", "sme",
    "smei16i64", "smef64f64", "smei8i32", "smef16f32", "smeb16f32", "smef32f32", "smefa64", "wfxt",
    "ebf16", "sveebf16", "cssc", "rprfm", "sve2p1", "sme2", "sme2p1", "smei16i32",
    "smebi32i32", "smeb16b16", "smef16f16", "mops", "hbc", "sveb16b16", "lrcpc3", "lse128",
    "fpmr", "lut", "faminmax", "f8cvt", "f8fma", "f8dp4", "f8dp2", "f8e4m3",
    "f8e5m2", "smelutv2", "smef8f16", "smef8f32", "smesf8fma", "smesf8dp4", "smesf8dp2", "poe",
)  # fmt: skip

#: MIDR_EL1 of QEMU's CPU models (as qemu-aarch64 7.2 reports them; neoverse-v1 from QEMU 8.1's
#: definition), for when the probe cannot read the register. ``max`` has no entry: its id is QEMU's
#: own and changes between versions, so only the probe can tell it.
KNOWN_MIDR: Mapping[str, int] = MappingProxyType({
    "a64fx": 0x461F0010,
    "cortex-a35": 0x411FD040,
    "cortex-a53": 0x410FD034,
    "cortex-a57": 0x411FD070,
    "cortex-a72": 0x410FD083,
    "cortex-a76": 0x414FD0B1,
    "neoverse-n1": 0x414FD0C1,
    "neoverse-v1": 0x411FD402,
})

BOGOMIPS = "50.00"  # what a 25 MHz architected timer gives; nothing reads it for speed
KERNEL_MAX = 255  # /sys/devices/system/cpu/kernel_max (NR_CPUS - 1), unless more CPUs are described
MAX_COUNT = 4096  # NR_CPUS of Debian's arm64 kernels
DEFAULT_PROBE_TIMEOUT = 120.0

#: Run by the emulated Python (stdlib only, any 3.x): prints one JSON line with what QEMU exposes.
#: MIDR_EL1 is read in a forked child, so an ``mrs`` that traps costs the value (null), not the probe.
PROBE = r"""
import ctypes, json, mmap, os, platform
libc = ctypes.CDLL(None)
libc.getauxval.restype = ctypes.c_ulong
libc.getauxval.argtypes = [ctypes.c_ulong]
hwcap = int(libc.getauxval(16))
hwcap2 = int(libc.getauxval(26))

def read_midr():
    code = (0xD5380000).to_bytes(4, "little") + (0xD65F03C0).to_bytes(4, "little")  # mrs x0, midr_el1; ret
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    return int(ctypes.CFUNCTYPE(ctypes.c_uint64)(address)())

midr = None
if hwcap & (1 << 11):
    try:
        reader, writer = os.pipe()
        child = os.fork()
        if child == 0:
            try:
                os.write(writer, str(read_midr()).encode())
            finally:
                os._exit(0)
        os.close(writer)
        answer = b""
        while True:
            chunk = os.read(reader, 64)
            if not chunk:
                break
            answer += chunk
        os.close(reader)
        _, status = os.waitpid(child, 0)
        if status == 0 and answer.strip().isdigit():
            midr = int(answer)
    except Exception:
        midr = None
print(json.dumps({"machine": platform.machine(), "hwcap": hwcap, "hwcap2": hwcap2, "midr": midr}))
"""


class CpuProbeError(Exception):
    """The emulated Python could not be run or did not say what CPU it sees (one-line message)."""


def feature_names(hwcap: int, hwcap2: int) -> tuple[str, ...]:
    """Linux's names of the set bits, in /proc/cpuinfo's order; bits Linux has no name for are left out."""
    names = [name for bit, name in enumerate(HWCAP_NAMES) if hwcap >> bit & 1]
    names += [name for bit, name in enumerate(HWCAP2_NAMES) if hwcap2 >> bit & 1]
    return tuple(names)


_BITS = {name: (0, bit) for bit, name in enumerate(HWCAP_NAMES)} | {
    name: (1, bit) for bit, name in enumerate(HWCAP2_NAMES)
}


def feature_bits(names: Iterable[str]) -> tuple[int, int]:
    """The (hwcap, hwcap2) words with the named features set; a name Linux does not use is a ValueError."""
    words = [0, 0]
    for name in names:
        if name not in _BITS:
            raise ValueError(f"{name!r} is not an arm64 HWCAP name")
        word, bit = _BITS[name]
        words[word] |= 1 << bit
    return words[0], words[1]


@dataclass(frozen=True)
class CpuDescription:
    """One emulated CPU model as the kernel would describe it; ``count`` identical CPUs."""

    model: str  # QEMU's model name, without properties ("max", not "max,sve256=on")
    midr: int  # MIDR_EL1
    hwcap: int  # getauxval(AT_HWCAP)
    hwcap2: int  # getauxval(AT_HWCAP2)
    count: int = field(default_factory=available_cores)  # CPUs: by default this process's affinity

    def __post_init__(self) -> None:
        if not self.model or any(c.isspace() or c in "/," for c in self.model):
            raise ValueError(f"CPU model {self.model!r} is not a QEMU model name")
        for name in ("midr", "hwcap", "hwcap2"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
                raise ValueError(f"{name} {value!r} is not a 64-bit register value")
        if not isinstance(self.count, int) or isinstance(self.count, bool) or not 1 <= self.count <= MAX_COUNT:
            raise ValueError(f"CPU count {self.count!r} is not between 1 and {MAX_COUNT}")

    def to_json(self) -> dict[str, Any]:
        """The description as JSON types; ``features`` and ``midr_hex`` are for readers, :meth:`from_json` ignores them."""
        return {"model": self.model, "midr": self.midr, "midr_hex": f"0x{self.midr:08x}", "hwcap": self.hwcap,
                "hwcap2": self.hwcap2, "count": self.count, "features": list(self.features)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CpuDescription:
        """The description :meth:`to_json` wrote; a ValueError when ``data`` is not one."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a CPU description is a JSON object, not {type(data).__name__}")
        missing = [key for key in ("model", "midr", "hwcap", "hwcap2", "count") if key not in data]
        if missing:
            raise ValueError(f"a CPU description needs {', '.join(missing)}")
        if not isinstance(data["model"], str):
            raise ValueError(f"CPU model {data['model']!r} is not a string")
        return cls(data["model"], data["midr"], data["hwcap"], data["hwcap2"], data["count"])

    @property
    def features(self) -> tuple[str, ...]:
        """The ``Features`` of /proc/cpuinfo: Linux's names of the set HWCAP and HWCAP2 bits."""
        return feature_names(self.hwcap, self.hwcap2)

    @property
    def implementer(self) -> int:
        """MIDR_EL1[31:24]: 0x41 Arm, 0x46 Fujitsu, 0x00 QEMU's ``max``."""
        return self.midr >> 24 & 0xFF

    @property
    def variant(self) -> int:
        """MIDR_EL1[23:20]: the major revision (the r of rNpM)."""
        return self.midr >> 20 & 0xF

    @property
    def architecture(self) -> int:
        """MIDR_EL1[19:16]: 0xf, "defined by the ID registers", on every Armv8 part."""
        return self.midr >> 16 & 0xF

    @property
    def part(self) -> int:
        """MIDR_EL1[15:4]: the part number (0xd0c Neoverse-N1, 0xd08 Cortex-A72)."""
        return self.midr >> 4 & 0xFFF

    @property
    def revision(self) -> int:
        """MIDR_EL1[3:0]: the minor revision (the p of rNpM)."""
        return self.midr & 0xF


# -- the probe --------------------------------------------------------------------------------------


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _model_of(argv: Sequence[str], env: Mapping[str, str] | None) -> str:
    """The ``-cpu`` QEMU runs ``argv`` with: the command line wins over $QEMU_CPU; QEMU's default is max."""
    spec = None
    for i, arg in enumerate(argv[:-1]):
        if arg in ("-cpu", "--cpu"):
            spec = argv[i + 1]
            break
    if spec is None:
        spec = (os.environ if env is None else env).get("QEMU_CPU") or "max"
    return spec.split(",", 1)[0]


def probe(argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = DEFAULT_PROBE_TIMEOUT,
          model: str | None = None, count: int | None = None) -> CpuDescription:
    """What CPU the emulated Python started by ``argv`` sees: runs ``[*argv, "-c", PROBE]``.

    ``argv`` starts the emulated interpreter, e.g. ``["qemu-aarch64-static", "-L", root, "-cpu",
    "neoverse-n1", f"{root}/usr/bin/python3.11"]``; ``env`` is its environment (default: this
    process's). ``model`` defaults to the ``-cpu`` in ``argv``, else ``$QEMU_CPU``, else ``max``;
    ``count`` to this process's CPU affinity. MIDR_EL1 is the probe's reading, else
    :data:`KNOWN_MIDR`'s. Raises :class:`CpuProbeError` when the interpreter cannot be run, fails,
    times out, prints no answer or is not aarch64.
    """
    if not argv:
        raise CpuProbeError("CPU probe: no command to start the emulated Python")
    command = [*argv, "-c", PROBE]
    shown = os.path.basename(argv[0])
    try:
        done = subprocess.run(command, capture_output=True, text=True, errors="replace", check=False,
                              timeout=timeout, env=None if env is None else dict(env))
    except subprocess.TimeoutExpired:
        raise CpuProbeError(f"CPU probe: {shown} did not answer within {timeout:g}s") from None
    except OSError as exc:
        raise CpuProbeError(f"CPU probe: cannot run {argv[0]}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or done.stdout.strip().splitlines()[-1:] or ["no output"]
        raise CpuProbeError(f"CPU probe: {shown} exited with {done.returncode}: {_one_line(tail[0])}")
    answer = None
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            try:
                answer = json.loads(line)
            except ValueError:
                answer = None
            break
    if not isinstance(answer, dict) or not all(
        isinstance(answer.get(key), int) and not isinstance(answer.get(key), bool) for key in ("hwcap", "hwcap2")
    ):
        raise CpuProbeError(f"CPU probe: {shown} printed no answer: {_one_line(done.stdout) or 'nothing'}")
    machine = answer.get("machine")
    if machine != "aarch64":
        raise CpuProbeError(f"CPU probe: {shown} runs a {machine!r} Python, not an emulated aarch64 one")
    name = (model or _model_of(argv, env)).split(",", 1)[0]
    midr = answer.get("midr")
    if not isinstance(midr, int) or isinstance(midr, bool) or not 0 < midr < 1 << 64:
        if name not in KNOWN_MIDR:
            raise CpuProbeError(f"CPU probe: could not read MIDR_EL1 of {name!r} and it is not in KNOWN_MIDR")
        midr = KNOWN_MIDR[name]
    try:
        if count is None:
            return CpuDescription(name, midr, answer["hwcap"], answer["hwcap2"])
        return CpuDescription(name, midr, answer["hwcap"], answer["hwcap2"], count)
    except ValueError as exc:
        raise CpuProbeError(f"CPU probe: {exc}") from None


# -- caches and topology ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheLevel:
    """One ``cache/indexN`` entry; ``shared`` is who shares it: "core", "cluster" or "all" CPUs."""

    level: int
    type: str  # "Data", "Instruction" or "Unified", as sysfs spells it
    size_kib: int
    ways: int
    line: int  # coherency_line_size, bytes
    shared: str

    @property
    def sets(self) -> int:
        return self.size_kib * 1024 // (self.ways * self.line)


def _levels(l1d: tuple[int, int], l1i: tuple[int, int], l2: tuple[int, int, str], l3: tuple[int, int, str],
            line: int = 64) -> tuple[CacheLevel, ...]:
    return (CacheLevel(1, "Data", *l1d, line, "core"), CacheLevel(1, "Instruction", *l1i, line, "core"),
            CacheLevel(2, "Unified", l2[0], l2[1], line, l2[2]), CacheLevel(3, "Unified", l3[0], l3[1], line, l3[2]))


# (size KiB, ways) of L1d and L1i, (size KiB, ways, shared) of L2 and L3; CPUs per cluster. The L1
# and L2 figures are the Technical Reference Manuals' (QEMU's CCSIDR values for these models); an L3
# of a model that has none (the Cortex-A clusters, A64FX) is a nominal shared one, see the docstring.
_N1 = _levels((64, 4), (64, 4), (1024, 8, "core"), (32768, 16, "all"))
_A57 = _levels((32, 2), (48, 3), (2048, 16, "cluster"), (4096, 16, "all"))
_CACHES: Mapping[str, tuple[tuple[CacheLevel, ...], int]] = MappingProxyType({
    "neoverse-n1": (_N1, 1),  # L3: a Graviton2-like 32 MiB system-level cache
    "neoverse-v1": (_N1, 1),  # same L1/L2 sizes and ways; L3: Graviton3-like
    "cortex-a76": (_levels((64, 4), (64, 4), (512, 8, "core"), (2048, 16, "cluster")), 4),
    "cortex-a72": (_levels((32, 2), (48, 3), (1024, 16, "cluster"), (4096, 16, "all")), 4),
    "cortex-a57": (_A57, 4),
    "cortex-a53": (_levels((32, 4), (32, 2), (1024, 16, "cluster"), (4096, 16, "all")), 4),
    "cortex-a35": (_levels((32, 4), (32, 2), (512, 8, "cluster"), (4096, 16, "all")), 4),
    "a64fx": (_levels((64, 4), (64, 4), (8192, 16, "cluster"), (32768, 16, "all"), line=256), 12),
    "max": (_A57, 4),  # QEMU 7.2's max starts from the Cortex-A57 definition
})


def cache_levels(model: str) -> tuple[tuple[CacheLevel, ...], int]:
    """The four cache entries of ``model`` and how many CPUs form a cluster (Neoverse-N1's for unknown models)."""
    return _CACHES.get(model.split(",", 1)[0], _CACHES["neoverse-n1"])


def _cpulist(cpus: Iterable[int]) -> str:
    """A kernel cpu list: ``0-3,6,8-9``."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    start = previous = None
    for cpu in [*ordered, None]:
        if cpu is not None and previous is not None and cpu == previous + 1:
            previous = cpu
            continue
        if start is not None and previous is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = cpu
    return ",".join(parts)


def _cpumask(cpus: Iterable[int], bits: int) -> str:
    """A kernel cpu mask (``%*pb`` over ``bits`` CPUs): hex, 32-bit groups joined by commas, the first group
    only as wide as its bits need (``3`` for CPUs 0-1 of 2, ``00000000,00000003`` of 64)."""
    value = 0
    for cpu in cpus:
        value |= 1 << cpu
    top = bits - (bits % 32 or 32)
    first = f"{value >> top & 0xFFFFFFFF:0{-(-(bits - top) // 4)}x}"
    return ",".join([first, *(f"{value >> shift & 0xFFFFFFFF:08x}" for shift in range(top - 32, -1, -32))])


# -- the files --------------------------------------------------------------------------------------


def cpuinfo_text(cpu: CpuDescription) -> str:
    """``/proc/cpuinfo`` as the arm64 kernel prints it (``c_show`` in arch/arm64/kernel/cpuinfo.c)."""
    features = "".join(f" {name}" for name in cpu.features)
    block = (f"BogoMIPS\t: {BOGOMIPS}\n"
             f"Features\t:{features}\n"
             f"CPU implementer\t: 0x{cpu.implementer:02x}\n"
             f"CPU architecture: 8\n"
             f"CPU variant\t: 0x{cpu.variant:x}\n"
             f"CPU part\t: 0x{cpu.part:03x}\n"
             f"CPU revision\t: {cpu.revision}\n\n")
    return "".join(f"processor\t: {n}\n{block}" for n in range(cpu.count))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="ascii")


def write_tree(root: Path, cpu: CpuDescription) -> None:
    """Write ``root/proc/cpuinfo`` and ``root/sys/devices/system/cpu`` for ``cpu``.

    Creates nothing in ``root`` but ``proc/`` and ``sys/``. An existing ``sys/devices/system/cpu`` is
    replaced whole, so no CPU of an earlier, larger description is left behind. Files are written in
    place: build the tree in a folder of its own and rename it for an atomic swap.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"sysroot {root} is not a folder")
    _write(root / "proc" / "cpuinfo", cpuinfo_text(cpu))
    base = root / "sys" / "devices" / "system" / "cpu"
    if base.is_symlink() or base.is_file():
        base.unlink()
    elif base.is_dir():
        shutil.rmtree(base)
    everyone = range(cpu.count)
    every = _cpulist(everyone) + "\n"
    for name in ("online", "possible", "present"):
        _write(base / name, every)
    _write(base / "offline", "\n")
    _write(base / "isolated", "\n")
    _write(base / "kernel_max", f"{max(KERNEL_MAX, cpu.count - 1)}\n")
    levels, cluster_size = cache_levels(cpu.model)
    for n in everyone:
        here = base / f"cpu{n}"
        cluster = n // cluster_size
        groups = {
            "core": [n],
            "cluster": [c for c in everyone if c // cluster_size == cluster],
            "all": list(everyone),
        }
        ident = here / "regs" / "identification"
        _write(ident / "midr_el1", f"0x{cpu.midr:016x}\n")
        _write(ident / "revidr_el1", f"0x{0:016x}\n")
        topology = {
            "core_id": str(n),
            "cluster_id": str(cluster),
            "physical_package_id": "0",
            "thread_siblings": _cpumask(groups["core"], cpu.count),
            "thread_siblings_list": _cpulist(groups["core"]),
            "core_cpus": _cpumask(groups["core"], cpu.count),
            "core_cpus_list": _cpulist(groups["core"]),
            "cluster_cpus": _cpumask(groups["cluster"], cpu.count),
            "cluster_cpus_list": _cpulist(groups["cluster"]),
            "core_siblings": _cpumask(groups["all"], cpu.count),
            "core_siblings_list": _cpulist(groups["all"]),
            "package_cpus": _cpumask(groups["all"], cpu.count),
            "package_cpus_list": _cpulist(groups["all"]),
        }
        for name, value in topology.items():
            _write(here / "topology" / name, value + "\n")
        for index, cache in enumerate(levels):
            sharing = groups[cache.shared]
            entry = {
                "level": str(cache.level),
                "type": cache.type,
                "size": f"{cache.size_kib}K",
                "ways_of_associativity": str(cache.ways),
                "number_of_sets": str(cache.sets),
                "coherency_line_size": str(cache.line),
                "physical_line_partition": "1",
                "shared_cpu_list": _cpulist(sharing),
                "shared_cpu_map": _cpumask(sharing, cpu.count),
            }
            for name, value in entry.items():
                _write(here / "cache" / f"index{index}" / name, value + "\n")
