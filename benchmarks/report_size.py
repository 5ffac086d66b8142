"""Report sizes against their budgets, rendered from stored bundles (nothing reruns).

Budgets (the HTML-report issue): the built-in library's HTML report under 2 MB, the ten-profile
matrix's under 5 MB, every markdown report under GitHub's 1 MiB job-summary limit, and the default
terminal output of the library run under 5 KB. Also checks that two renders are byte-identical.

    detharness run --out bundles/library                      # the library on this machine
    detharness matrix ci/profiles.toml --out bundles/matrix   # the ten profiles
    python benchmarks/report_size.py --library bundles/library --matrix bundles/matrix
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

from detharness import cli

BUDGETS = {("library", "html"): 2_000_000, ("matrix", "html"): 5_000_000, ("library", "md"): 1024 * 1024,
           ("matrix", "md"): 1024 * 1024, ("library", "txt"): 5_000}


def _render(bundles: list[str], folder: Path, name: str) -> dict[str, int]:
    paths = {ext: folder / f"{name}.{ext}" for ext in ("html", "md", "json", "xml")}
    out = io.StringIO()
    code = cli.main(["report", *bundles, *(["--all-pairs"] if len(bundles) > 1 else []),
                     *[arg for p in paths.values() for arg in ("--report", str(p))]], out=out)
    if code not in (0, 1):
        sys.exit(f"detharness report exited {code}")
    sizes = {ext: p.stat().st_size for ext, p in paths.items()}
    sizes["txt"] = len(out.getvalue().encode())
    first = paths["html"].read_bytes()
    cli.main(["report", *bundles, *(["--all-pairs"] if len(bundles) > 1 else []), "--report", str(paths["html"])],
             out=io.StringIO())
    sizes["deterministic"] = int(first == paths["html"].read_bytes())
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", metavar="BUNDLE", help="A bundle of the built-in library's run")
    parser.add_argument("--matrix", metavar="DIR", help="A matrix folder (one bundle per profile)")
    args = parser.parse_args()
    runs: dict[str, list[str]] = {}
    if args.library:
        runs["library"] = [args.library]
    if args.matrix:
        from detharness import matrix

        spec = matrix.load_profiles(str(Path(__file__).resolve().parent.parent / "ci" / "profiles.toml"))
        runs["matrix"] = [str(Path(args.matrix) / p.name) for p in spec.profiles
                          if (Path(args.matrix) / p.name / "manifest.json").exists()]
    over = False
    with tempfile.TemporaryDirectory() as tmp:
        for name, bundles in runs.items():
            sizes = _render(bundles, Path(tmp), name)
            for fmt in ("html", "md", "json", "xml", "txt"):
                budget = BUDGETS.get((name, fmt))
                verdict = "" if budget is None else ("ok" if sizes[fmt] <= budget else "OVER")
                over |= verdict == "OVER"
                print(f"{name:8s} {fmt:5s} {sizes[fmt]:>11,d} bytes  {'budget ' + format(budget, ',') if budget else '':>20s}"
                      f"  {verdict}")
            print(f"{name:8s} html renders byte-identical: {'yes' if sizes['deterministic'] else 'NO'}")
            over |= not sizes["deterministic"]
    sys.exit(1 if over else 0)


if __name__ == "__main__":
    main()
