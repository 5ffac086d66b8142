"""Records survive a bundle round trip, arrays included, and parts merge without loss."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np

from detharness.cases import KnownDivergence
from detharness.record import CaseRecord, RunRecord, VariantRecord, load, merge_parts, save, save_part


def _record(variant: str = "v") -> RunRecord:
    case = CaseRecord(id="demo/c", fingerprint="f", inputs={"x": np.arange(4, dtype=np.float32)},
                      params={"w": np.ones(2, dtype=ml_dtypes.bfloat16)}, reference="ref", inputs_digest="d",
                      known=[KnownDivergence("why", variants="*[t:*", when={"torch.version": "2.13*"})])
    v = VariantRecord(id=f"demo/c[{variant}:cpu:bfloat16:eager]", case="demo/c", impl=variant, backend="torch",
                      device="cpu", dtype="bfloat16", mode="eager", status="ok", seconds=0.5,
                      outputs={"y": np.array([1.5, -0.0], dtype=ml_dtypes.bfloat16)}, tolerances={"y": "ulp(2)"},
                      info={"onnxruntime.providers": ["CPUExecutionProvider"]})
    return RunRecord(environment={"torch.version": "2.13.0"}, environment_id="e1", cases={case.id: case},
                     variants={v.id: v}, options={"repeat": 1})


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    save(_record(), tmp_path / "b")
    loaded = load(tmp_path / "b")
    v = loaded.variants["demo/c[v:cpu:bfloat16:eager]"]
    assert v.outputs["y"].dtype == ml_dtypes.bfloat16
    assert v.outputs["y"].tobytes() == np.array([1.5, -0.0], dtype=ml_dtypes.bfloat16).tobytes()
    assert v.tolerances == {"y": "ulp(2)"} and v.info == {"onnxruntime.providers": ["CPUExecutionProvider"]}
    case = loaded.cases["demo/c"]
    np.testing.assert_array_equal(case.inputs["x"], np.arange(4, dtype=np.float32))
    assert case.known[0].applies("demo/c[t:cpu:float32:eager]", "environment", {"torch.version": "2.13.0"})
    assert loaded.environment_id == "e1"


def test_parts_from_two_writers_merge_into_one_manifest(tmp_path: Path) -> None:
    save_part(_record("a"), tmp_path / "b", "gw0")
    save_part(_record("b"), tmp_path / "b", "gw1")
    merge_parts(tmp_path / "b")
    assert sorted(load(tmp_path / "b").variants) == ["demo/c[a:cpu:bfloat16:eager]", "demo/c[b:cpu:bfloat16:eager]"]


def test_a_schema_1_bundle_reads_with_empty_logs_and_typed_verdicts(tmp_path: Path) -> None:
    import json

    from detharness.bundle import BundleWriter
    from detharness.results import Outcome, Status, VariantLog

    save(_record(), tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    variant = manifest["variants"]["demo/c[v:cpu:bfloat16:eager]"]
    for key in ("traceback", "log", "intermediates", "cache", "shard"):
        del variant[key]
    manifest["schema"] = 1
    # A schema-1 verdict: the fields of that time only.
    manifest["verdicts"] = [{"check": "backend", "case": "demo/c", "variant": "demo/c[v:cpu:bfloat16:eager]",
                             "output": "y", "status": "close", "message": "CLOSE", "max_ulp": 1, "env_diff": {}}]
    BundleWriter(tmp_path / "b").write_manifest(manifest)
    loaded = load(tmp_path / "b")
    v = loaded.variants["demo/c[v:cpu:bfloat16:eager]"]
    assert v.status is Outcome.OK and v.log == VariantLog() and v.traceback is None and v.intermediates is None
    (verdict,) = loaded.verdicts
    assert verdict.status is Status.CLOSE and verdict.max_ulp == 1 and verdict.traceback is None


def test_a_saved_bundle_keeps_no_empty_parts_folder(tmp_path: Path) -> None:
    save(_record(), tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["arrays", "manifest.json"]


def test_a_merge_lists_the_expected_variants_no_part_holds(tmp_path: Path) -> None:
    save_part(_record("a"), tmp_path / "b", "gw0")
    lost = merge_parts(tmp_path / "b", expected=["demo/c[a:cpu:bfloat16:eager]", "demo/c[lost:cpu:bfloat16:eager]"])
    assert lost == ["demo/c[lost:cpu:bfloat16:eager]"]
    import json

    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["not_recorded"] == ["demo/c[lost:cpu:bfloat16:eager]"]
    assert list(load(tmp_path / "b").variants) == ["demo/c[a:cpu:bfloat16:eager]"]  # readers accept the key


def test_a_bundle_lock_refuses_a_live_holder_and_takes_over_a_dead_ones(tmp_path: Path) -> None:
    import json
    import os
    import socket
    import subprocess
    import sys

    import pytest

    from detharness.errors import UsageError
    from detharness.locking import LOCK_NAME, BundleLock, check_out_folder

    with BundleLock(tmp_path / "new"):
        assert json.loads((tmp_path / "new" / LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(UsageError, match=f"another detharness run is writing this bundle \\(pid {os.getpid()} "):
            BundleLock(tmp_path / "new").acquire()
        check_out_folder(tmp_path / "new", replace=False)  # only a lock in it: still a fresh folder
    assert not (tmp_path / "new").exists()  # made for the lock, nothing written: gone again

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / LOCK_NAME).write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
    with BundleLock(tmp_path / "old") as taken:
        assert taken.holder() is not None and taken.holder()["pid"] == os.getpid()  # type: ignore[index]
    (tmp_path / "old" / LOCK_NAME).write_text(json.dumps({"pid": dead, "host": "elsewhere.example"}))
    with pytest.raises(UsageError, match=r"elsewhere\.example"):
        BundleLock(tmp_path / "old").acquire()  # another host's pid cannot be checked: refused
