"""Can any bundle crash the reader? Generates valid bundles, mutates them, and reads each one.

Each bundle is built from a seeded generator (cases, variants, arrays, results, environment), then
given one to three mutations: a field of another type, a removed or unknown key, an integer literal
of thousands of digits, JSON nested thousands of levels deep, an impossible or huge shape, a long
string, a broken array ref, broken text, and file-system damage (``arrays/`` a file, a symlink loop,
an array file that is a folder or a loop, a missing or truncated array). Every bundle is then read
with :func:`detharness.record.load`; where that succeeds, it is compared with its unmutated base in
this process as ``detharness compare`` would (``cli.main``: text, json and md reports written to a
strict UTF-8 stream; in turn ``--all-pairs``, ``--match-device any`` and three bundles). The only
acceptable endings are a record, a :class:`~detharness.errors.BundleError` (exit 2, one line), or
the compare's own exit 0/1/2; anything else is counted as a traceback. Prints how many bundles
ended each way, how many tracebacks (the goal: 0) and how long it took. Also lone surrogates
(``"\\ud800"``), which Python reads but cannot print.

    python benchmarks/fuzz_bundles.py [--bundles 10000] [--seed 0] [--compare-every 1] [--show 5]

``tests/test_manifest.py`` uses the same generator and mutations, driven by hypothesis.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from detharness.bundle import BundleWriter
from detharness.compare import Status
from detharness.results import Outcome, Result

_DTYPES = ("float32", "float64", "float16", "int32", "bool", "bfloat16", "complex64", "uint8")
_HUGE = "__FUZZ_HUGE_LITERAL__"


# ---------------------------------------------------------------------------------------------
# Valid bundles


def _word(rng: random.Random, n: int = 6) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_./-") for _ in range(rng.randint(1, n)))


#: compare() of two 0-d complex arrays raises ValueError ("Changing the dtype of a 0d array is only
#: supported if the itemsize is unchanged", compare/core.py's complex view): a compare bug, not a
#: reader one, so the generator leaves 0-d complex arrays out unless --zero-d-complex asks for them.
ZERO_D_COMPLEX = False


def _array(rng: random.Random) -> np.ndarray:
    from detharness.dtypes import numpy_dtype

    shape = tuple(rng.randint(0, 4) for _ in range(rng.randint(0, 3)))
    dtype = rng.choice(_DTYPES)
    if not shape and dtype.startswith("complex") and not ZERO_D_COMPLEX:
        shape = (1,)
    data = np.random.default_rng(rng.getrandbits(32)).standard_normal(shape) * 4
    return np.asarray(data).astype(numpy_dtype(dtype))


def _json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randint(-(2**40), 2**40)
    if kind == 3:
        return rng.uniform(-1e6, 1e6)
    if kind == 4:
        return _word(rng, 12)
    if kind == 5:
        return [_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {_word(rng): _json(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def make_manifest(rng: random.Random, put: Callable[[np.ndarray], dict[str, Any]]) -> dict[str, Any]:
    """A valid schema-2 run manifest whose arrays are stored with ``put``."""
    arrays = [put(_array(rng)) for _ in range(rng.randint(1, 4))]

    def refs() -> dict[str, Any]:
        return {_word(rng, 3): dict(rng.choice(arrays)) for _ in range(rng.randint(0, 2))}

    environment: dict[str, Any] = {"python.version": "3.11.7", "cpu.isa": ["avx2", "fma"]}
    environment.update({f"env.{_word(rng)}": rng.choice([None, _word(rng, 30), rng.randint(0, 64)])
                        for _ in range(rng.randint(0, 4))})
    cases: dict[str, Any] = {}
    variants: dict[str, Any] = {}
    verdicts: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, 3)):
        cid = f"case/{_word(rng)}"
        cases[cid] = {
            "fingerprint": f"{rng.getrandbits(64):016x}", "tags": [_word(rng) for _ in range(rng.randint(0, 2))],
            "location": "cases.py:1", "reference": rng.choice([None, "numpy"]), "reference_variant": None,
            "kind": rng.choice(["compute", "rng"]), "inputs": refs(), "params": refs(),
            "inputs_digest": f"{rng.getrandbits(64):016x}",
            "known": [{"reason": _word(rng, 20), "variants": "*", "checks": ["environment"],
                       "when": {"cpu.model": "*"}}] if rng.random() < 0.3 else [],
        }
        if rng.random() < 0.3:
            cases[cid]["reference_outputs"] = refs()
        for _ in range(rng.randint(1, 3)):
            impl, device = rng.choice(["numpy", "torch", "jax"]), rng.choice(["cpu", "cuda"])
            dtype, mode = rng.choice(_DTYPES), rng.choice(["eager", "compile", "jit"])
            vid = f"{cid}[{impl}:{device}:{dtype}:{mode}]"
            status = rng.choice([o.value for o in Outcome])
            outputs = refs() if status == "ok" else {}
            variants[vid] = {
                "case": cid, "impl": impl, "backend": impl, "device": device, "dtype": dtype, "mode": mode,
                "reference": rng.random() < 0.3, "status": status,
                "error": None if status == "ok" else _word(rng, 40), "traceback": None,
                "seconds": rng.random(), "outputs": outputs,
                "tolerances": {name: rng.choice([None, "ulp(4)", "exact"]) for name in outputs},
                "distinct_results": None, "info": {_word(rng): _json(rng) for _ in range(rng.randint(0, 2))},
                "log": {"stdout": _word(rng, 20), "stderr": "", "warnings": [], "truncated": False},
                "intermediates": None, "cache": None, "shard": None,
            }
            if rng.random() < 0.2:
                variants[vid]["repeat_outputs"] = refs()
                variants[vid]["repeat"] = {"processes": 2, "runs": 1, "digests": [["ab"], ["ab"]], "failures": []}
            if rng.random() < 0.2:
                variants[vid]["roundtrip"] = {"format": "onnx", "exact": True, "before_outputs": refs(),
                                              "changed_params": {"w": {"before": dict(arrays[0]),
                                                                       "after": dict(arrays[0])}},
                                              "notes": [], "saved_bytes": 10, "seconds": 0.1}
            if rng.random() < 0.5:
                verdicts.append(Result(check="backend", case=cid, variant=vid,
                                       status=rng.choice(list(Status)), message=_word(rng, 30),
                                       max_ulp=rng.randint(0, 9), mean_ulp=rng.choice([0.5, "nan", "inf"]),
                                       worst_index=[0, 1], env_diff={"x": [1, 2]}).to_json())
    return {
        "tool": "detharness", "schema": 2, "version": "0.1.0", "created": "2026-01-01T00:00:00+00:00",
        "environment": environment, "environment_id": f"{rng.getrandbits(256):064x}",
        "options": {"cases": ["cases.py"], "repeat": 1, "keyword": None},
        "cases": cases, "variants": variants, "verdicts": verdicts,
    }


def make_bundle(path: Path, rng: random.Random) -> dict[str, Any]:
    """Write a valid bundle at ``path``; returns its manifest as written."""
    writer = BundleWriter(path)
    writer.write_manifest(make_manifest(rng, writer.put_array))
    shutil.rmtree(path / "parts", ignore_errors=True)
    manifest: dict[str, Any] = json.loads((path / "manifest.json").read_text())
    return manifest


# ---------------------------------------------------------------------------------------------
# Mutations: each takes the manifest (a copy to change), the bundle folder and the generator, and
# may change the manifest in place, the files, or both. The manifest is written afterwards by
# :func:`mutate`, unless the mutation returns the text to write itself.


def _nodes(manifest: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) in the manifest: where a value can be replaced or removed."""
    found: list[tuple[Any, Any]] = []
    stack = [manifest]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            found += [(node, key) for key in node]
            stack += list(node.values())
        elif isinstance(node, list):
            found += [(node, index) for index in range(len(node))]
            stack += node
    return found


def _refs(manifest: Any) -> list[dict[str, Any]]:
    return [container[key] for container, key in _nodes(manifest)
            if isinstance(container[key], dict) and "sha256" in container[key]]


def _pick(rng: random.Random, manifest: Any) -> tuple[Any, Any]:
    nodes = _nodes(manifest)
    # Favour the fields a reader uses over the many inside refs and results.
    return rng.choice(nodes)


def _other_value(rng: random.Random, old: Any) -> Any:
    choices: list[Any] = [None, True, 0, -1, 2**63, 2**64 + 1, -(2**70), 1.5, 1e308, "", _word(rng, 8), "nan",
                          [], [1, "a"], {}, {"a": 1}, {"format": "raw", "sha256": "0", "file": "x"}, [[[]]],
                          ["x"] * 3, {"stdout": 1}, "ok", "identical"]
    value = rng.choice(choices)
    return value if type(value) is not type(old) else rng.choice(choices)


def m_type_swap(manifest: Any, bundle: Path, rng: random.Random) -> str | None:
    container, key = _pick(rng, manifest)
    container[key] = _other_value(rng, container[key])
    return None


def m_remove_key(manifest: Any, bundle: Path, rng: random.Random) -> str | None:
    dicts = [(c, k) for c, k in _nodes(manifest) if isinstance(c, dict)]
    container, key = rng.choice(dicts)
    del container[key]
    return None


def m_unknown_key(manifest: Any, bundle: Path, rng: random.Random) -> str | None:
    dicts = [c[k] for c, k in _nodes(manifest) if isinstance(c[k], dict)] + [manifest]
    rng.choice(dicts)[f"future_{_word(rng)}"] = _json(rng)
    return None


def _literal(manifest: Any, rng: random.Random, literal: str) -> str:
    container, key = _pick(rng, manifest)
    container[key] = _HUGE
    return json.dumps(manifest).replace(json.dumps(_HUGE), literal, 1)


def m_huge_int(manifest: Any, bundle: Path, rng: random.Random) -> str | None:
    return _literal(manifest, rng, rng.choice(["9" * rng.randint(4301, 20000), "-" + "1" * 5000, "1" * 41]))


def m_odd_number(manifest: Any, bundle: Path, rng: random.Random) -> str | None:
    return _literal(manifest, rng, rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-1e400",
                                               "0." + "1" * 5000, "1E+99999999"]))


def m_surrogate(manifest: Any, bundle: Path, rng: random.Random) -> str | None:
    """A lone UTF-16 surrogate escape: valid JSON, a str Python cannot print or encode."""
    if rng.random() < 0.5:
        return _literal(manifest, rng, rng.choice(['"\\ud800"', '"a\\udfff"', '["\\udc00"]']))
    variants = manifest.get("variants")
    if isinstance(variants, dict) and variants:
        vid = rng.choice(list(variants))
        variants[vid + "@@"] = variants.pop(vid)
        return json.dumps(manifest).replace('@@"', '\\ud801"', 1)
    return m_type_swap(manifest, bundle, rng)


def m_deep(manifest: Any, bundle: Path, rng: random.Random) -> str | None:
    depth = rng.choice([65, 100, 900, 5000, 100000])
    opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
    inner = opener * depth + "1" + closer * depth if opener != "[" else "[" * depth + "]" * depth
    return _literal(manifest, rng, inner)


def m_shape(manifest: Any, bundle: Path, rng: random.Random) -> str | None:
    refs = _refs(manifest)
    if not refs:
        return m_type_swap(manifest, bundle, rng)
    ref = rng.choice(refs)
    ref["shape"] = rng.choice([[0, 2**63], [2**63, 0], [0, 2**64 + 3], [0, 2**62, 4], [2**31, 2**31, 0, 2],
                               [-1], [1.5], "3", [True], [None], [1] * 65, [0] * 64, [], [2**40, 2**40],
                               [3, 4, 5], [0, 7]])
    if rng.random() < 0.5:
        ref.pop("nbytes", None)
    return None


def m_ref(manifest: Any, bundle: Path, rng: random.Random) -> str | None:
    refs = _refs(manifest)
    if not refs:
        return m_type_swap(manifest, bundle, rng)
    ref = rng.choice(refs)
    field = rng.choice(["format", "dtype", "sha256", "file", "nbytes", "numpy_dtype"])
    ref[field] = rng.choice(["pickle", "object", "str", "<U99999999", "|S0", "0" * 64, "A" * 64, "../../etc/passwd",
                             "/etc/passwd", "arrays\\..\\x.bin", "C:/x", f"arrays/{'0' * 64}.bin", -1, 2**70, None,
                             True, ["arrays"], {"a": 1}, "bfloat16", "float8_e4m3fn"])
    return None


def m_long_string(manifest: Any, bundle: Path, rng: random.Random) -> str | None:
    text = "x" * rng.choice([4097, 20000, 1 << 20 | 1, 3 << 20])
    if rng.random() < 0.5 and isinstance(manifest.get("environment"), dict):
        manifest["environment"][rng.choice(["cpu.model", "env.PATH"])] = text
    else:
        container, key = _pick(rng, manifest)
        container[key] = text
    return None


def m_status(manifest: Any, bundle: Path, rng: random.Random) -> str | None:
    variants = manifest.get("variants")
    if isinstance(variants, dict) and variants:
        entry = variants[rng.choice(list(variants))]
        if isinstance(entry, dict):
            entry["status"] = rng.choice(["identical", "crashed", "", "OK", 1])
            return None
    return m_type_swap(manifest, bundle, rng)


def m_many_refs(manifest: Any, bundle: Path, rng: random.Random) -> str | None:
    """Many refs to one array: valid, and must not cost refs x bytes."""
    refs = _refs(manifest)
    if refs and isinstance(manifest.get("variants"), dict):
        for entry in manifest["variants"].values():
            if isinstance(entry, dict):
                entry["outputs"] = {f"o{i}": dict(refs[0]) for i in range(rng.randint(10, 300))}
                break
    return None


def m_text(manifest: Any, bundle: Path, rng: random.Random) -> str | None:
    text = json.dumps(manifest)
    choice = rng.randrange(5)
    if choice == 0:
        return text[: rng.randrange(len(text))]
    if choice == 1:
        index = rng.randrange(len(text))
        return text[:index] + rng.choice(["\x00", "\ud800", "}", '"', "\\", "\n", ",", "\u202e"]) + text[index + 1:]
    if choice == 2:
        (bundle / "manifest.json").write_bytes(text.encode()[:50] + b"\xff\xfe" + text.encode()[50:])
        return ""
    if choice == 3:
        return rng.choice(["[]", "null", "1", '"detharness"', '{"tool": "detharness"}',
                           '{"tool": "detharness", "schema": 2}', '{"tool": "detharness", "schema": 1}'])
    return text.replace('"schema": 2', rng.choice(['"schema": 1', '"schema": 3', '"schema": 0', '"schema": "2"']), 1)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def m_files(manifest: Any, bundle: Path, rng: random.Random) -> str | None:
    arrays = bundle / "arrays"
    files = sorted(f for f in arrays.glob("*.bin") if f.is_file() and not f.is_symlink()) if arrays.is_dir() else []
    choice = rng.randrange(9)
    if choice == 0:  # arrays/ is a file
        _remove(arrays)
        arrays.write_bytes(b"not a folder")
    elif choice == 1:  # arrays/ is a symlink loop
        _remove(arrays)
        os.symlink("arrays", arrays)
    elif choice == 2 and files:  # an array file is a symlink loop
        target = rng.choice(files)
        target.unlink()
        os.symlink(target.name, target)
    elif choice == 3 and files:  # an array file is a folder
        target = rng.choice(files)
        target.unlink()
        target.mkdir()
    elif choice == 4 and files:  # missing
        rng.choice(files).unlink()
    elif choice == 5 and files:  # truncated or grown
        target = rng.choice(files)
        data = target.read_bytes()
        target.write_bytes(data[:-1] if data and rng.random() < 0.5 else data + b"\0")
    elif choice == 6:  # manifest.json is a folder or a dangling symlink
        _remove(bundle / "manifest.json")
        if rng.random() < 0.5:
            (bundle / "manifest.json").mkdir()
        else:
            os.symlink("nowhere.json", bundle / "manifest.json")
        return ""
    elif choice == 7:  # arrays/ points outside the bundle
        _remove(arrays)
        os.symlink(bundle.parent, arrays)
    elif choice == 8 and files:  # a symlink to a sibling array (inside: fine where the content matches)
        first, *rest = files
        if rest:
            rest[0].unlink()
            os.symlink(first.name, rest[0])
    return None


MUTATIONS: dict[str, Callable[[Any, Path, random.Random], str | None]] = {
    "type_swap": m_type_swap, "remove_key": m_remove_key, "unknown_key": m_unknown_key, "huge_int": m_huge_int,
    "odd_number": m_odd_number, "surrogate": m_surrogate, "deep": m_deep, "shape": m_shape, "ref": m_ref, "long_string": m_long_string,
    "status": m_status, "many_refs": m_many_refs, "text": m_text, "files": m_files,
}


def mutate(bundle: Path, manifest: dict[str, Any], rng: random.Random, names: list[str]) -> None:
    """Apply the named mutations to the bundle at ``bundle`` whose manifest is ``manifest`` (changed)."""
    text: str | None = None
    for name in names:
        if text is not None:  # the manifest is text now: only file-system damage still applies
            if name == "files":
                m_files(manifest, bundle, rng)
            continue
        text = MUTATIONS[name](manifest, bundle, rng)
    if text == "":
        return  # the mutation wrote (or removed) manifest.json itself
    path = bundle / "manifest.json"
    if path.is_dir() or path.is_symlink():
        return
    path.write_text(json.dumps(manifest) if text is None else text, encoding="utf-8", errors="surrogatepass")


# ---------------------------------------------------------------------------------------------
# Reading


def read_one(path: Path, baseline: Path | None = None, fmt: str = "text", extra: tuple[str, ...] = ()) -> str:
    """How reading ``path`` ended: ``loaded``, ``refused``, ``compare-N`` or ``traceback: ...``.

    With ``baseline``, a loaded bundle is also compared with it through ``cli.main``, its report in
    ``fmt`` written to a strict UTF-8 stream as a terminal or a pipe would take it.
    """
    from detharness import cli, record
    from detharness import environment as env_mod
    from detharness.errors import BundleError

    try:
        loaded = record.load(path)
    except BundleError as error:
        message = str(error)
        if "\n" in message or not message:
            return f"traceback: BundleError of {message.count(chr(10)) + 1} lines"
        return "refused"
    except BaseException as error:  # what this benchmark counts
        if isinstance(error, KeyboardInterrupt):
            raise
        return "traceback: " + "".join(traceback.format_exception_only(type(error), error)).strip()[:300]
    try:
        env_mod.environment_id(loaded.environment)
        env_mod.diff(loaded.environment, loaded.environment)
    except Exception as error:
        return "traceback: environment: " + "".join(traceback.format_exception_only(type(error), error)).strip()[:300]
    if baseline is None:
        return "loaded"
    stderr = io.StringIO()
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    with contextlib.redirect_stderr(stderr):
        code = cli.main(["compare", str(baseline), str(path), *extra, "--format", fmt], out=out)
        out.flush()
    try:
        stderr.getvalue().encode("utf-8")
    except UnicodeEncodeError:
        return "traceback: compare: stderr is not UTF-8 text"
    lines = stderr.getvalue().splitlines()
    if code == 3 or (code == 2 and len(lines) != 1):
        return "traceback: compare: " + " | ".join(lines[-3:])[:300]
    return f"compare-{code}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bases", type=int, default=40, help="distinct valid bundles to mutate")
    parser.add_argument("--compare-every", type=int, default=1,
                        help="also run compare (in process) on every Nth bundle that loads (0: never)")
    parser.add_argument("--show", type=int, default=5, help="tracebacks to print")
    parser.add_argument("--zero-d-complex", action="store_true",
                        help="also generate 0-d complex arrays (compare crashes on them: see ZERO_D_COMPLEX)")
    args = parser.parse_args(argv)
    global ZERO_D_COMPLEX
    ZERO_D_COMPLEX = args.zero_d_complex

    rng = random.Random(args.seed)
    endings: Counter[str] = Counter()
    tracebacks: list[str] = []
    start = time.perf_counter()
    slowest = (0.0, "")
    with tempfile.TemporaryDirectory(prefix="detharness-fuzz-") as tmp:
        root = Path(tmp)
        bases = []
        for index in range(args.bases):
            path = root / f"base{index}"
            bases.append((path, make_bundle(path, random.Random(rng.getrandbits(64)))))
        loaded = 0
        for index in range(args.bundles):
            base, manifest = rng.choice(bases)
            work = root / f"work{index % 2}"
            _remove(work)
            shutil.copytree(base, work, symlinks=True)
            names = [rng.choice(list(MUTATIONS)) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
            seed = rng.getrandbits(64)
            mutate(work, json.loads(json.dumps(manifest)), random.Random(seed), names)
            began = time.perf_counter()
            compare_it = args.compare_every > 0 and loaded % args.compare_every == 0
            extra = (("--all-pairs",), ("--match-device", "any"), (), (str(base),), ())[index % 5]
            ending = read_one(work, base if compare_it else None, ("text", "json", "md")[index % 3], extra)
            took = time.perf_counter() - began
            if took > slowest[0]:
                slowest = (took, f"{'+'.join(names)} (seed {seed})")
            if ending in ("loaded",) or ending.startswith("compare-"):
                loaded += 1
            if ending.startswith("traceback"):
                tracebacks.append(f"{'+'.join(names)} (seed {seed}): {ending}")
                ending = "traceback"
            endings[f"{'+'.join(names) if ending == 'traceback' else ending}"] += 1
    seconds = time.perf_counter() - start
    print(f"fuzz_bundles: {args.bundles} mutated bundles (seed {args.seed}) in {seconds:.1f} s "
          f"({1000 * seconds / max(args.bundles, 1):.1f} ms each; slowest read {slowest[0] * 1000:.0f} ms: {slowest[1]})")
    for ending, count in sorted(endings.items(), key=lambda kv: -kv[1]):
        print(f"  {count:6d}  {ending}")
    print(f"tracebacks: {len(tracebacks)}")
    for line in tracebacks[: args.show]:
        print(f"  {line}")
    return 1 if tracebacks else 0


if __name__ == "__main__":
    sys.exit(main())
