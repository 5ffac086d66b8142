"""Unusable bundles: exit 2, one line on stderr, nothing read outside the bundle, nothing written."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory: pytest.TempPathFactory, small_cases_module: Path) -> Path:
    out = tmp_path_factory.mktemp("good") / "bundle"
    result = run_cli("run", "--cases", str(small_cases_module), "--backend", "numpy", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="module")
def small_cases_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import SMALL_CASES, write_cases

    return write_cases(tmp_path_factory.mktemp("cases"), SMALL_CASES)


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _first_output_ref(manifest: dict) -> dict:
    variant = next(v for v in manifest["variants"].values() if v["outputs"])
    return next(iter(variant["outputs"].values()))


def _truncate(bundle: Path) -> None:
    ref = _first_output_ref(_manifest(bundle))
    path = bundle / ref["file"]
    path.write_bytes(path.read_bytes()[:-4])


def _edit_bytes(bundle: Path) -> None:
    ref = _first_output_ref(_manifest(bundle))
    path = bundle / ref["file"]
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))


def _escape(bundle: Path) -> None:
    manifest = _manifest(bundle)
    ref = _first_output_ref(manifest)
    secret = bundle.parent / f"{ref['sha256']}.bin"
    shutil.copy(bundle / ref["file"], secret)
    ref["file"] = f"../{secret.name}"
    (bundle / "manifest.json").write_text(json.dumps(manifest))


class _Boom:
    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return (open, ("/tmp/detharness-unpickled-marker", "w"))


def _pickled(bundle: Path) -> None:
    manifest = _manifest(bundle)
    ref = _first_output_ref(manifest)
    (bundle / ref["file"]).write_bytes(pickle.dumps(_Boom()))
    ref["format"] = "pickle"
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _newer_schema(bundle: Path) -> None:
    manifest = _manifest(bundle)
    manifest["schema"] = 999
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _no_manifest(bundle: Path) -> None:
    (bundle / "manifest.json").unlink()


def _foreign(bundle: Path) -> None:
    (bundle / "manifest.json").write_text(json.dumps({"schema": 1, "name": "some other tool"}))


def _write(bundle: Path, manifest: dict) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _huge_int(bundle: Path) -> None:
    text = (bundle / "manifest.json").read_text()
    (bundle / "manifest.json").write_text(text.replace('"schema": 2', '"schema": ' + "9" * 5000, 1))


def _huge_empty_shape(bundle: Path) -> None:
    manifest = _manifest(bundle)
    ref = _first_output_ref(manifest)
    ref["shape"], ref["nbytes"] = [0, 2**63], 0
    _write(bundle, manifest)


def _tolerances_list(bundle: Path) -> None:
    manifest = _manifest(bundle)
    next(iter(manifest["variants"].values()))["tolerances"] = ["ulp(4)"]
    _write(bundle, manifest)


def _environment_id_number(bundle: Path) -> None:
    manifest = _manifest(bundle)
    manifest["environment_id"] = 12
    _write(bundle, manifest)


def _known_when_list(bundle: Path) -> None:
    manifest = _manifest(bundle)
    next(iter(manifest["cases"].values()))["known"] = [{"reason": "r", "when": ["x"]}]
    _write(bundle, manifest)


def _arrays_is_a_file(bundle: Path) -> None:
    shutil.rmtree(bundle / "arrays")
    (bundle / "arrays").write_text("")


def _arrays_symlink_loop(bundle: Path) -> None:
    shutil.rmtree(bundle / "arrays")
    (bundle / "arrays").symlink_to("arrays")


def _nested_900(bundle: Path) -> None:
    manifest = _manifest(bundle)
    manifest["options"]["deep"] = "@@"
    (bundle / "manifest.json").write_text(json.dumps(manifest).replace('"@@"', "[" * 900 + "]" * 900))


def _huge_environment_value(bundle: Path) -> None:
    manifest = _manifest(bundle)
    manifest["environment"]["env.HUGE"] = "x" * (50 << 20)
    _write(bundle, manifest)


@pytest.mark.parametrize(
    ("corrupt", "needle"),
    [
        (_truncate, "truncated"),
        (_edit_bytes, "sha256"),
        (_escape, "leaves the bundle"),
        (_pickled, "pickle"),
        (_newer_schema, "schema 999"),
        (_no_manifest, "manifest.json"),
        (_foreign, "not a detharness bundle"),
        (_huge_int, "integer literal of 5000 characters"),
        (_huge_empty_shape, ".shape[1]: 9223372036854775808 is out of range"),
        (_tolerances_list, "].tolerances: expected a mapping of str to str or null, got list"),
        (_environment_id_number, "environment_id: expected a string, got int"),
        (_known_when_list, "].known[0].when: expected a mapping of str to str, got list"),
        (_arrays_is_a_file, "cannot be read: not a directory"),
        (_arrays_symlink_loop, "cannot be read: too many levels of symbolic links"),
        (_nested_900, "nested more than 64 levels deep"),
        (_huge_environment_value, "environment['env.huge']: a string of 52428800 characters (at most 4096)"),
    ],
    ids=["truncated-array", "edited-hash", "path-leaves-bundle", "pickled-array", "newer-schema", "missing-manifest",
         "foreign", "int-5000-digits", "empty-shape-2^63", "tolerances-list", "environment-id-number", "known-when-list",
         "arrays-a-file", "arrays-symlink-loop", "nested-900", "environment-value-50mib"],
)
def test_unusable_bundle_exits_2_with_one_line(corrupt: Callable[[Path], None], needle: str, good_bundle: Path,
                                               tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(good_bundle, bundle)
    corrupt(bundle)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    marker = Path("/tmp/detharness-unpickled-marker")
    marker.unlink(missing_ok=True)
    result = run_cli("compare", str(good_bundle), str(bundle), "--report", str(tmp_path / "report.md"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("detharness: error: ")
    assert needle in result.stderr.lower()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    assert not marker.exists()
