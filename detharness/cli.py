"""The ``detharness`` command: list, env, run, merge, compare, report, bisect, tolerances, matrix.

Exit codes: 0 nothing in ``--fail-on`` happened; 1 something did; 2 bad usage or unusable input
(one line on stderr, no traceback); 3 an internal error (a bug in detharness); 130 interrupted
(Ctrl-C, one line).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from detharness import __version__
from detharness._io import terminal_safe
from detharness.cases import display_path
from detharness.errors import EXIT_FAILED, EXIT_INTERNAL, EXIT_OK, DetHarnessError, UsageError

if TYPE_CHECKING:
    from detharness.record import RunRecord

TRUST_NOTE = "runs the Python code in the case files it is given: only point it at code you trust"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # main() prints "detharness: error: " before it: name only the subcommand ("detharness run").
        command = self.prog.partition(" ")[2]
        raise UsageError(f"{command}: {message}" if command else message)


def _comma_list(values: list[str] | None) -> list[str]:
    return [item for value in values or [] for item in value.split(",") if item]


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cases", action="append", default=[], metavar="PATH",
                   help=f"Case file or folder (repeatable; default: the built-in library); {TRUST_NOTE}")
    p.add_argument("-k", dest="keyword", metavar="EXPR",
                   help="Only variants matching a pytest-style expression over ids and tags")
    p.add_argument("--tag", action="append", default=[], metavar="TAG", help="Only cases with this tag (repeatable)")


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("text", "md", "json"), default="text", help="Format of what goes to stdout")
    p.add_argument("--report", action="append", default=[], metavar="FILE",
                   help="Also write a report in the format its extension names: .html (one self-contained page "
                        "with plots), .md, .json, .txt, .xml (JUnit); repeatable")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="Text output: every result in a table and each failure in full (default: the summary and "
                        "one line per failure)")
    from detharness.results import DEFAULT_FAIL_ON, STATUSES

    fail_on = ",".join(s.value for s in DEFAULT_FAIL_ON)
    p.add_argument("--fail-on", default=fail_on, metavar="STATUS,...",
                   help=f"Statuses that make the exit code 1, of {', '.join(STATUSES)} (default: {fail_on})")


def _add_pairing(p: argparse.ArgumentParser, when: str = "") -> None:
    """How bundles are held against each other: ``compare``, and ``report`` of several bundles."""
    p.add_argument("--match-device", choices=("same", "any"), default="same",
                   help=f"{when}Pair variants by id (same) or by everything but the device (any)")
    p.add_argument("-k", dest="keyword", metavar="EXPR", help=f"{when}Only variants matching this expression")
    p.add_argument("--all-pairs", action="store_true",
                   help=f"{when}Also count the outputs that differ bitwise between every two bundles (from stored "
                        "hashes)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="detharness", description="Find where the same computation gives different numbers "
                     "across backends, devices, library versions and serialization round trips.")
    parser.add_argument("-V", "--version", action="version", version=f"detharness {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("list", help="List cases and their variants (imports no framework)")
    _add_selection(p)
    p.add_argument("--json", action="store_true", help="Print JSON")

    p = sub.add_parser("env", help="Print this machine's environment fingerprint")
    p.add_argument("--json", action="store_true", help="Print JSON")
    p.add_argument("--backend", action="append", default=[], metavar="NAME",
                   help="Also load these backends for their keys (default: every installed one)")

    from detharness.checks import RUN_CHECKS

    p = sub.add_parser("run", help=f"Run cases on every backend and device found here; {TRUST_NOTE}")
    _add_selection(p)
    p.add_argument("--backend", action="append", default=[], metavar="NAME", help="Only this backend (repeatable)")
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all", help="Devices to run on (default: all)")
    p.add_argument("--check", action="append", default=[], metavar="KIND",
                   help=f"Checks to run, and only the variants they look at: {', '.join(RUN_CHECKS)} "
                        "(repeatable or comma-separated; default: every one that applies)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="Run each variant N times in its worker and flag outputs that are not bitwise identical")
    p.add_argument("--repeat-processes", type=int, default=1, metavar="N",
                   help="Run each variant in N fresh sets of worker processes (new hash seeds, thread pools, "
                        "allocators) and flag outputs that are not bitwise identical")
    p.add_argument("--deterministic", action="store_true", help="Set every framework's determinism switches")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS", help="Time limit per variant (default: %(default)s)")
    p.add_argument("--inputs-from", metavar="BUNDLE", help="Replay a baseline bundle's stored inputs")
    p.add_argument("--out", metavar="DIR",
                   help="Write the bundle into this folder: a new or empty one (or, with --replace, one holding a "
                        "bundle); without it nothing is written")
    p.add_argument("--replace", action="store_true",
                   help="Replace the bundle already in --out DIR (the new one is swapped in only when complete; a "
                        "folder that is not a bundle is still refused)")
    p.add_argument("--in-process", action="store_true", help="Run everything in this process (for debugging)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="At most N worker processes per backend (default: as many as there are cores: a backend "
                        "whose remaining variants are worth it gets a helper when a core is idle; 1: one per "
                        "backend). Helpers keep the first worker's thread settings: the results are the same")
    p.add_argument("--shard", metavar="I/N",
                   help="Run only shard I of N of the selection (a stable, balanced share whole cases at a time; "
                        "every runner computes the same split); join the N bundles with detharness merge")
    p.add_argument("--intermediates", action="store_true",
                   help="Also record the output of every layer of model variants (torch modules, ONNX models), "
                        "for detharness bisect; with --inputs-from a bundle that has them, each layer is also re-run "
                        "on the baseline's inputs to it (the error it introduces itself)")
    _add_no_cache(p)
    _add_output(p)

    p = sub.add_parser("merge", help="Join the bundles of every shard of one run (run --shard I/N) into one bundle, "
                                     "as an unsharded run writes it, and rerun the run's checks on it")
    p.add_argument("bundles", nargs="+", metavar="BUNDLE", help="The shard bundles, one of each shard")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="Write the merged bundle into this folder: a new or empty one (or, with --replace, one "
                        "holding a bundle)")
    p.add_argument("--replace", action="store_true", help="Replace the bundle already in --out DIR")
    _add_output(p)

    p = sub.add_parser("compare", help="Compare bundles from different environments")
    p.add_argument("baseline", metavar="BASELINE")
    p.add_argument("candidates", nargs="+", metavar="CANDIDATE")
    _add_pairing(p)
    _add_output(p)

    p = sub.add_parser("bisect", help="Where does it start: the first layer whose output differs, between the "
                                      "layers two bundles recorded (run --intermediates), or between two variants "
                                      "of one case run here (--variant, --against)")
    p.add_argument("bundles", nargs="*", metavar="BUNDLE", help="BASELINE CANDIDATE, recorded with --intermediates")
    p.add_argument("--cases", action="append", default=[], metavar="PATH",
                   help=f"With --variant and --against: the case file or folder; {TRUST_NOTE}")
    p.add_argument("--variant", metavar="ID", help="The variant to bisect (with --against, run here)")
    p.add_argument("--against", metavar="ID", help="The variant it is held against, of the same case")
    p.add_argument("-k", dest="keyword", metavar="EXPR", help="Only variants matching this expression")
    _add_output(p)

    p = sub.add_parser("tolerances", help="From the results of stored bundles: the smallest tolerance each "
                                          "case, output and dtype needs, what it declares, and the slack")
    p.add_argument("bundles", nargs="+", metavar="BUNDLE")
    p.add_argument("--margin", type=float, default=2.0, metavar="K",
                   help="Suggest needed x K (default: %(default)s); never looser than what a case declares")
    p.add_argument("--format", choices=("text", "md", "json"), default="text", help="Format of what goes to stdout")
    p.add_argument("--write", metavar="FILE",
                   help="Write the suggestions as JSON a case loads with tolerance=from_file(FILE, CASE_ID)")

    p = sub.add_parser("report", help="Render stored bundles without rerunning: one bundle its run, two or more "
                                      "what compare of them gives")
    p.add_argument("bundles", nargs="+", metavar="BUNDLE")
    _add_pairing(p, when="Two or more bundles: ")
    _add_output(p)

    p = sub.add_parser("matrix", help=f"Run the cases under each environment profile of a TOML file, then compare "
                                      f"them all; {TRUST_NOTE}")
    p.add_argument("profiles", metavar="PROFILES", help="Profiles file (TOML; see ci/profiles.toml)")
    p.add_argument("-k", dest="keyword", metavar="EXPR",
                   help="Only variants matching this expression (overrides the file's keyword)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="A new folder: one bundle and log per profile, and the report (report.html where jinja2 is "
                        "installed, .md, .json, .txt, .xml)")
    p.add_argument("--profile", action="append", default=[], metavar="NAME",
                   help="Only these profiles and the baseline (repeatable or comma-separated)")
    p.add_argument("--overlays", metavar="DIR",
                   help="Cache of pinned-version overlays (default: ~/.cache/detharness/overlays)")
    p.add_argument("--intermediates", action="store_true",
                   help="Every profile records the layers of model variants, for detharness bisect")
    _add_no_cache(p)
    _add_output(p)

    p = sub.add_parser("cache", help="Show or empty the cache of prepared artefacts (ONNX exports, jax compiles)")
    cache_sub = p.add_subparsers(dest="cache_command", required=True, parser_class=_Parser)
    q = cache_sub.add_parser("info", help="Print the cache folder, its entries and their size")
    q.add_argument("--json", action="store_true", help="Print JSON")
    cache_sub.add_parser("clear", help="Remove every entry (and jax's compiles; the matrix's overlays stay)")
    return parser


def _add_no_cache(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-cache", action="store_true",
                   help="Do not use the cache of prepared artefacts (ONNX exports, jax compiles; folder: "
                        "$DETHARNESS_CACHE_DIR, else ~/.cache/detharness): export and compile everything afresh")


def _fail_on(text: str) -> list[Any]:
    from detharness.results import parse_statuses

    return parse_statuses(text, "--fail-on")


def _progress(stream: TextIO) -> Callable[[int, int, str], None] | None:
    """A one-line progress display on a terminal; nothing in CI or when piped."""
    if not stream.isatty() or os.environ.get("CI"):
        return None

    def show(done: int, total: int, current: str) -> None:
        width = 24
        filled = int(width * done / max(total, 1))
        text = f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {current}"[:120]
        stream.write(text.ljust(121) if done < total else "\r" + " " * 121 + "\r")
        stream.flush()

    return show


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    from tabulate import tabulate

    from detharness._io import json_dumps
    from detharness.backends import BACKENDS
    from detharness.cases import discover
    from detharness.runner import RunOptions, select_variants

    registry = discover(args.cases or None)
    variants = select_variants(registry, RunOptions(case_paths=args.cases, keyword=args.keyword, tags=args.tag))
    backends = {name: b.describe() for name, b in BACKENDS.items()}
    if args.json:
        chosen = {v.case.id for v in variants}
        cases = [dict(c.describe(), variants=[v.id for v in variants if v.case is c]) for c in registry if c.id in chosen]
        out.write(json_dumps({"cases": cases, "backends": backends}, indent=2) + "\n")
        return EXIT_OK
    rows = []
    for v in variants:
        b = backends.get(v.impl.backend)
        note = "" if b is None or b["installed"] else f"unavailable: {b['install_hint']}"
        rows.append([terminal_safe(v.id), terminal_safe(",".join(sorted(v.case.tags))),
                     "reference" if v.impl.reference else "", note])
    out.write(tabulate(rows, headers=["variant", "tags", "role", "note"], tablefmt="simple") + "\n")
    unavailable = [f"{n} ({b['install_hint']})" for n, b in backends.items() if not b["installed"]]
    n_cases = len({v.case.id for v in variants})
    out.write(f"\n{_count(n_cases, 'case')}, {_count(len(variants), 'variant')}")
    out.write(f"; unavailable backends: {', '.join(unavailable)}\n" if unavailable else "\n")
    return EXIT_OK


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def cmd_env(args: argparse.Namespace, out: TextIO) -> int:
    from detharness import environment
    from detharness._io import json_dumps
    from detharness.backends import BACKENDS, get_backend, load_backend

    fp = environment.fingerprint()
    names = args.backend or [n for n, b in BACKENDS.items() if b.is_installed()]
    for name in names:
        backend = get_backend(name)
        if not backend.is_installed():
            raise UsageError(f"backend {name!r} is not installed: {backend.install_hint}")
        fp = environment.merge(fp, load_backend(name, deterministic=False)[1]["fingerprint"])
    fp = dict(sorted(fp.items()))
    if args.json:
        out.write(json_dumps({"id": environment.environment_id(fp), "fingerprint": fp}, indent=2) + "\n")
    else:
        out.write(terminal_safe(environment.format_fingerprint(fp), multiline=True)
                  + f"\nid: {environment.environment_id(fp)}\n")
    return EXIT_OK


def _check_report_paths(args: argparse.Namespace) -> None:
    """A ``--report`` of an unknown extension (or HTML without jinja2) is a usage error before
    anything runs or is written."""
    from detharness import report as report_mod

    report_mod.check_paths(args.report)


def _emit(report: dict[str, Any], args: argparse.Namespace, out: TextIO, arrays: Any = None) -> None:
    """The report to stdout in ``--format``, and to each ``--report`` file; an HTML report draws its
    plots from ``arrays`` (a :class:`~detharness.report.ArraySource`)."""
    from detharness import report as report_mod

    html = [p for p in args.report if report_mod.format_for_path(p) == "html"]
    if html:  # the markdown report's cut note points at it
        report["html_report"] = display_path(html[0])
    report["fail_on"] = [s.value for s in _fail_on(args.fail_on)]
    out.write(report_mod.render(report, args.format, verbose=args.verbose))
    path = ""
    try:
        for path in args.report:
            report_mod.write(report, path, arrays=arrays)
    except OSError as exc:  # a folder that cannot be made or written: one line, what was written stays
        raise UsageError(f"--report {path}: {exc.strerror or exc}") from None


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    from detharness import checks, locking
    from detharness import record as record_mod
    from detharness import report as report_mod
    from detharness.results import failed
    from detharness.runner import RunOptions, run

    fail_on = _fail_on(args.fail_on)
    asked = _comma_list(args.check)
    wanted = asked or list(checks.RUN_CHECKS)
    unknown = [c for c in wanted if c not in checks.RUN_CHECKS]
    if unknown:
        raise UsageError(f"--check {unknown[0]!r}: choose from {', '.join(checks.RUN_CHECKS)} "
                         "(environment checks run with `detharness compare`)")
    if "repeat" in asked and args.repeat < 2 and args.repeat_processes < 2:
        raise UsageError("--check repeat needs --repeat N or --repeat-processes N with N of 2 or more")
    _check_report_paths(args)
    if args.replace and not args.out:
        raise UsageError("--replace needs --out DIR")
    shard = None
    if args.shard is not None:
        from detharness.shard import parse_shard

        shard = parse_shard(args.shard)
    lock = None
    if args.out:
        # Refused before anything runs; checked again once this run holds the folder's lock.
        locking.check_out_folder(args.out, replace=args.replace)
        lock = locking.BundleLock(args.out).acquire()
    try:
        if lock is not None:
            locking.check_out_folder(args.out, replace=args.replace)
        replay = record_mod.load(args.inputs_from) if args.inputs_from else None
        start = time.perf_counter()
        options = RunOptions(case_paths=args.cases, keyword=args.keyword, tags=args.tag,
                             backends=_comma_list(args.backend), device=args.device, repeat=args.repeat,
                             repeat_processes=args.repeat_processes, checks=asked, deterministic=args.deterministic,
                             timeout=args.timeout, inputs_from=replay, in_process=args.in_process,
                             progress=_progress(sys.stderr), intermediates=args.intermediates, shard=shard,
                             workers=args.workers)
        if args.no_cache:
            options.cache = False
        record = run(options)
        _warn_unkept_exports(record)
        empty_shard = bool(shard and not record.variants and record.options["shard"]["selected"])
        if not record.variants and not empty_shard:
            raise UsageError(f"{_selection_text(args)} selects no variant; `detharness list` with the same "
                             "options shows what there is")
        results = checks.run_checks(record, wanted)
        record.verdicts = results
        if lock is not None:
            _save_locked(record, args.out, lock)
    finally:
        if lock is not None:
            lock.release()
    report = report_mod.build(results, {record.environment_id: record.environment}, title="detharness run",
                              seconds=time.perf_counter() - start,
                              extra={"bundle": display_path(args.out) if args.out else None,
                                     "variants": _variant_summary(record)})
    _emit(report, args, out, arrays=report_mod.ArraySource(default=record))
    if not args.out and args.format != "json":  # JSON says it with "bundle": null
        out.write(f"{NO_BUNDLE}\n")
    if empty_shard:
        sys.stderr.write(f"detharness: note: shard {args.shard.strip()} of this selection is empty: nothing to run "
                         "(there are fewer cases than shards)\n")
    return EXIT_FAILED if failed(results, fail_on) else EXIT_OK


def cmd_merge(args: argparse.Namespace, out: TextIO) -> int:
    """One bundle from the bundles of every shard of one run, equal to what the unsharded run
    writes: the union of the shards' cases, variants and fingerprints, with the run's checks rerun
    on it. Any doubt about the set of shards is a refusal (exit 2, one line), never a partial merge."""
    from pathlib import Path

    from detharness import checks, locking
    from detharness import merge as merge_mod
    from detharness import record as record_mod
    from detharness import report as report_mod
    from detharness.results import failed

    fail_on = _fail_on(args.fail_on)
    _check_report_paths(args)
    target = Path(args.out).absolute()
    for path in args.bundles:
        if Path(path).absolute() == target:
            raise UsageError(f"merge: --out {args.out} is one of the shard bundles; choose a new folder")
    locking.check_out_folder(args.out, replace=args.replace)
    start = time.perf_counter()
    records = [record_mod.load(path) for path in args.bundles]
    record, wanted = merge_mod.merge_shards(records, [display_path(p) for p in args.bundles])
    results = checks.run_checks(record, wanted)
    record.verdicts = results
    with locking.BundleLock(args.out) as lock:
        locking.check_out_folder(args.out, replace=args.replace)
        _save_locked(record, args.out, lock)
    report = report_mod.build(results, {record.environment_id: record.environment}, title="detharness merge",
                              seconds=time.perf_counter() - start,
                              extra={"bundle": display_path(args.out), "shards": [display_path(p) for p in args.bundles],
                                     "variants": _variant_summary(record)})
    _emit(report, args, out, arrays=report_mod.ArraySource(default=record))
    return EXIT_FAILED if failed(results, fail_on) else EXIT_OK


NO_BUNDLE = "no bundle written (use --out DIR)"


def _selection_text(args: argparse.Namespace) -> str:
    given = [f"-k {shlex.quote(args.keyword)}"] if args.keyword else []
    given += [f"--tag {t}" for t in args.tag] + [f"--backend {b}" for b in _comma_list(args.backend)]
    given += [f"--check {c}" for c in _comma_list(args.check)]
    if args.device != "all":
        given.append(f"--device {args.device}")
    return " ".join(given) or "the selection"


def _save_locked(record: Any, out_dir: str, lock: Any) -> None:
    """Write the bundle at ``out_dir`` (whose lock this run holds); one that replaces a bundle is
    written beside it and swapped in only when complete, so an interrupted run leaves the old one."""
    from pathlib import Path

    from detharness import locking
    from detharness import record as record_mod

    target = Path(out_dir)
    if not locking.is_bundle(target):
        record_mod.save(record, target)
        return
    staging = locking.staging_folder(target)
    try:
        record_mod.save(record, staging)
        lock.also_hold(staging)
        locking.swap_in(staging, target)
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise
    record.path = str(target)


def _variant_summary(record: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in record.variants.values():
        counts[v.status.value] = counts.get(v.status.value, 0) + 1
    return counts


def cmd_compare(args: argparse.Namespace, out: TextIO) -> int:
    from detharness import record as record_mod
    from detharness import report as report_mod
    from detharness.attribution import bundle_labels, compare_bundles
    from detharness.results import failed

    fail_on = _fail_on(args.fail_on)
    _check_report_paths(args)
    start = time.perf_counter()

    paths = [args.baseline, *args.candidates]
    records = [record_mod.load(path) for path in paths]
    # More than two bundles (or --all-pairs) adds the case x environment matrix and the attribution.
    results, nway = compare_bundles(records, bundle_labels(paths), match_device=args.match_device,
                                    keyword=args.keyword, all_pairs=args.all_pairs)
    environments = {r.environment_id: r.environment for r in records}
    extra: dict[str, Any] = {"bundles": [display_path(p) for p in paths], **nway}
    report = report_mod.build(results, environments, title="detharness compare",
                              seconds=time.perf_counter() - start, extra=extra)
    _emit(report, args, out, arrays=report_mod.ArraySource(dict(zip(bundle_labels(paths), records, strict=True))))
    return EXIT_FAILED if failed(results, fail_on) else EXIT_OK


def cmd_bisect(args: argparse.Namespace, out: TextIO) -> int:
    """Between two bundles: the environment check's results of the variants both recorded layers
    for, each with its ``first_divergence``. Between two variants of one case: they run here, in
    this process, with their layers recorded, and the same is said of the pair."""
    from detharness import bisect
    from detharness import record as record_mod
    from detharness import report as report_mod
    from detharness.results import failed

    fail_on = _fail_on(args.fail_on)
    _check_report_paths(args)
    start = time.perf_counter()
    if args.variant or args.against:
        if args.bundles or not (args.variant and args.against):
            raise UsageError("bisect: give BASELINE CANDIDATE bundles, or --variant ID --against ID (with --cases)")
        results, environments, arrays, bisected = _bisect_variants(args)
        extra: dict[str, Any] = {"bisected": bisected}
    else:
        if len(args.bundles) != 2:
            raise UsageError("bisect: give two bundles, BASELINE CANDIDATE (recorded with --intermediates)")
        from detharness.attribution import bundle_labels, compare_bundles

        records = [record_mod.load(path) for path in args.bundles]
        labels = bundle_labels(args.bundles)
        with_layers = [vid for vid, v in records[1].variants.items()
                       if v.layers and vid in records[0].variants and records[0].variants[vid].layers]
        if not with_layers:
            raise UsageError("bisect: no variant has recorded layers in both bundles (run them with --intermediates)")
        results, _ = compare_bundles(records, labels, keyword=args.keyword)
        results = [r for r in results if r.variant in with_layers]
        pairs = {vid: (records[0].variants[vid], records[1].variants[vid]) for vid in with_layers}
        results = bisect.attach(results, pairs)
        environments = {r.environment_id: r.environment for r in records}
        arrays = report_mod.ArraySource(dict(zip(labels, records, strict=True)))
        extra = {"bundles": [display_path(p) for p in args.bundles], "bisected": bisect.layers_in_common(pairs)}
    report = report_mod.build(results, environments, title="detharness bisect", seconds=time.perf_counter() - start,
                              extra=extra)
    _emit(report, args, out, arrays=arrays)
    return EXIT_FAILED if failed(results, fail_on) else EXIT_OK


def _bisect_variants(args: argparse.Namespace) -> tuple[list[Any], dict[str, Any], Any, dict[str, int]]:
    from detharness import bisect
    from detharness import report as report_mod
    from detharness.cases import parse_variant_id
    from detharness.checks.base import judged, not_ok, tolerance_map
    from detharness.compare import compare
    from detharness.runner import RunOptions, run

    ids = [args.against, args.variant]
    cases = {parse_variant_id(i)[0] for i in ids}
    if len(cases) != 1:
        raise UsageError(f"bisect: --variant and --against must be variants of one case, not {' and '.join(sorted(cases))}")
    keyword = " or ".join(f"'{i}'" for i in ids)
    record = run(RunOptions(case_paths=args.cases, in_process=True, intermediates=True, only_ids=ids))
    missing = [i for i in ids if i not in record.variants]
    if missing:
        raise UsageError(f"bisect: no variant {missing[0]!r} here; `detharness list` shows the variants "
                         f"(selected with {keyword})")
    base, cand = (record.variants[i] for i in ids)
    case = record.cases.get(cand.case)
    results: list[Any] = []
    if base.status.value != "ok" or cand.status.value != "ok":
        results = [not_ok("bisect", v, base.id, None) for v in (base, cand) if v.status.value != "ok"]
    else:
        verdict = compare(dict(base.outputs), dict(cand.outputs), tolerance=tolerance_map(cand))
        results = judged("bisect", cand.case, case, cand.id, verdict, base.outputs, cand.outputs,
                                baseline=base.id, candidate=cand.id, reproduce=None, environment=record.environment)
        results = bisect.attach(results, {cand.id: (base, cand)})
    return (results, {record.environment_id: record.environment}, report_mod.ArraySource(default=record),
            bisect.layers_in_common({cand.id: (base, cand)}))


def cmd_tolerances(args: argparse.Namespace, out: TextIO) -> int:
    """The tolerances the evidence needs against those declared: nothing is edited, a case opts in
    by loading the written file."""
    from detharness import record as record_mod
    from detharness import tolerances

    if not args.margin >= 1:
        raise UsageError(f"--margin {args.margin}: use a factor of 1 or more (the suggestion is needed x K)")
    records = [record_mod.load(path) for path in args.bundles]
    rows = tolerances.needed(records)
    out.write(tolerances.main_table(records, margin=args.margin, fmt=args.format, rows=rows).rstrip("\n") + "\n")
    if args.write:
        suggestions = tolerances.suggest(rows, margin=args.margin)
        try:
            tolerances.write(args.write, suggestions)
        except OSError as exc:
            raise UsageError(f"--write {args.write}: {exc.strerror or exc}") from None
        if args.format != "json":
            out.write(f"wrote {display_path(args.write)}: load it with "
                      f"case(..., tolerance=from_file({display_path(args.write)!r}, CASE_ID))\n")
    return EXIT_OK


def cmd_report(args: argparse.Namespace, out: TextIO) -> int:
    """One bundle: its stored verdicts, as the run that wrote it reported them. Two or more: what
    ``compare`` of them reports. Nothing reruns; the HTML report draws its plots from the bundles."""
    if len(args.bundles) > 1:
        args.baseline, args.candidates = args.bundles[0], args.bundles[1:]
        return cmd_compare(args, out)
    from detharness import record as record_mod
    from detharness import report as report_mod
    from detharness.results import failed

    fail_on = _fail_on(args.fail_on)
    _check_report_paths(args)
    if args.keyword or args.all_pairs or args.match_device != "same":
        raise UsageError("report: -k, --all-pairs and --match-device need two or more bundles")
    record = record_mod.load(args.bundles[0])
    report = report_mod.build(record.verdicts, {record.environment_id: record.environment}, title="detharness run",
                              extra={"bundle": display_path(args.bundles[0]), "variants": _variant_summary(record),
                                     "created": record.created})
    _emit(report, args, out, arrays=report_mod.ArraySource(default=record))
    return EXIT_FAILED if failed(record.verdicts, fail_on) else EXIT_OK


def cmd_matrix(args: argparse.Namespace, out: TextIO) -> int:
    from detharness import matrix
    from detharness import report as report_mod
    from detharness.results import Status

    fail_on = _fail_on(args.fail_on)
    _check_report_paths(args)
    spec = matrix.load_profiles(args.profiles).select(_comma_list(args.profile))
    if not args.no_cache:
        from detharness import cache

        cache.max_bytes()  # refused once here, not by every profile's run
    start = time.perf_counter()

    def progress(line: str) -> None:
        sys.stderr.write(f"detharness matrix: {terminal_safe(line)}\n")
        sys.stderr.flush()

    outcomes = matrix.run_matrix(spec, args.out, keyword=args.keyword, overlays=args.overlays, progress=progress,
                                 intermediates=args.intermediates, no_cache=args.no_cache)
    report = matrix.matrix_report(spec, outcomes, seconds=time.perf_counter() - start)
    arrays = matrix.array_source(outcomes)
    report["fail_on"] = [s.value for s in fail_on]
    names = ["report.md", "report.json", "report.txt", "report.xml"]
    if report_mod.html_available():
        names.insert(0, "report.html")
        report["html_report"] = display_path(os.path.join(args.out, "report.html"))
    for name in names:
        report_mod.write(report, os.path.join(args.out, name), arrays=arrays)
    _emit(report, args, out, arrays=arrays)
    return EXIT_FAILED if any(Status(r["status"]) in fail_on for r in report["results"]) else EXIT_OK


def _warn_unkept_exports(record: RunRecord) -> None:
    """One line on stderr when exports were made and the cache folder could not keep them: the run
    is whole, but the next one will export them again, and without this nothing would say why."""
    from detharness import cache

    missed = sum(1 for v in record.variants.values() if v.cache and v.cache.get("onnx_export") == "miss")
    reason = cache.unwritable() if missed else None
    if reason:
        sys.stderr.write(f"detharness run: warning: {missed} ONNX export(s) were not kept in the cache: "
                         f"{terminal_safe(reason)} (DETHARNESS_CACHE_DIR chooses the folder)\n")


def cmd_cache(args: argparse.Namespace, out: TextIO) -> int:
    import json

    from detharness import cache

    if args.cache_command == "clear":
        before = cache.clear()
        out.write(f"cleared {terminal_safe(before['folder'])}: {before['entries']} entries "
                  f"({_size(before['bytes'])}) and jax's compiles ({_size(before['jax']['bytes'])})\n")
        return EXIT_OK
    found = cache.info()
    if getattr(args, "json", False):
        out.write(json.dumps(found, indent=2, sort_keys=True) + "\n")
        return EXIT_OK
    note = "" if found["enabled"] else " (off: DETHARNESS_NO_CACHE)"
    if found["unwritable"]:
        note += f" (cannot be written: {found['unwritable']})"
    out.write(f"folder:  {terminal_safe(found['folder'])}{terminal_safe(note)}\n")
    out.write(f"entries: {found['entries']} ({_size(found['bytes'])} of {_size(found['max_bytes'])})\n")
    for kind, counts in found["kinds"].items():
        out.write(f"  {terminal_safe(kind)}: {counts['entries']} ({_size(counts['bytes'])})\n")
    out.write(f"jax:     {terminal_safe(found['jax']['folder'])}: {found['jax']['files']} files "
              f"({_size(found['jax']['bytes'])})\n")
    return EXIT_OK


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


COMMANDS = {"cache": cmd_cache, "list": cmd_list, "env": cmd_env, "run": cmd_run, "merge": cmd_merge, "compare": cmd_compare,
            "report": cmd_report, "tolerances": cmd_tolerances, "bisect": cmd_bisect, "matrix": cmd_matrix}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        args = build_parser().parse_args(list(argv) if argv is not None else None)
        return COMMANDS[args.command](args, out)
    except DetHarnessError as exc:

        # One line, whatever the message holds: a case file's error can carry newlines and escape codes.
        sys.stderr.write(f"detharness: error: {terminal_safe(exc)}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("detharness: interrupted\n")
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception:  # a bug in detharness: keep the traceback, it is what a bug report needs
        import traceback

        traceback.print_exc()

        sys.stderr.write(f"detharness: internal error (please report it with the command: "
                         f"{terminal_safe(shlex.join(sys.argv))})\n")
        return EXIT_INTERNAL

