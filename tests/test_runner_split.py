"""A backend's variants split across several worker processes: same results, same environment id."""

from __future__ import annotations

from pathlib import Path

import pytest

from detharness.cases import Variant, discover
from detharness.compare.scan import available_cores
from detharness.record import RunRecord, digest_arrays
from detharness.runner import RunOptions, helper_worthwhile, run, select_variants, worker_limits
from tests.conftest import write_cases

# Three torch cases (a case is never split, so three can go to two workers), each with reductions
# long enough that torch splits them across its intra-op threads: a worker with fewer threads would
# sum them in another order. Each implementation prints its process id, which lands in its log.
# Where DH_TEST_RENDEZVOUS names a folder, a torch case waits (up to a minute) until a case of
# another process has started too: the split run's first worker cannot take every case before the
# second has imported torch, however loaded the machine (nothing about the outputs changes).
SPLIT_CASES = """
    import os
    import time

    import numpy as np

    from detharness import case

    def _numpy(name):
        c = case(name, tolerance="close(1e-4, 1e-4)",
                 inputs=lambda rng: {"x": rng.standard_normal((256, 512)).astype("float32"),
                                     "w": rng.standard_normal((512, 64)).astype("float32")})

        @c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
        def _(x, w):
            return {"sum": np.asarray(x.sum()), "cols": x.sum(0), "mm": x @ w}

        @c.impl("torch", backend="torch", dtypes=("float32", "bfloat16"), devices=("cpu",))
        def _(x, w):
            import torch
            print("pid", os.getpid())
            rendezvous = os.environ.get("DH_TEST_RENDEZVOUS")
            if rendezvous:
                open(os.path.join(rendezvous, str(os.getpid())), "w").close()
                deadline = time.monotonic() + 60
                while len(os.listdir(rendezvous)) < 2 and time.monotonic() < deadline:
                    time.sleep(0.05)
            return {"sum": x.float().sum(), "cols": x.float().sum(0), "mm": (x @ w).float()}

    for _name in ("split/a", "split/b", "split/c"):
        _numpy(_name)
"""


def _pids(record: RunRecord, backend: str) -> set[str]:
    return {v.log.stdout.split()[1] for v in record.variants.values() if v.backend == backend and v.log.stdout}


def test_split_and_unsplit_torch_workers_give_bitwise_equal_bundles_and_one_environment_id(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    cases = write_cases(tmp_path / "cases", SPLIT_CASES)
    unsplit = run(RunOptions(case_paths=[str(cases)], device="cpu", workers=1))
    (tmp_path / "rendezvous").mkdir()
    monkeypatch.setenv("DH_TEST_RENDEZVOUS", str(tmp_path / "rendezvous"))  # the workers inherit it
    split = run(RunOptions(case_paths=[str(cases)], device="cpu", workers={"torch": 2}))

    assert unsplit.options["workers"] == {"numpy": 1, "torch": 1}
    assert split.options["workers"] == {"numpy": 1, "torch": 2}
    assert "workers_declined" not in split.options
    assert len(_pids(unsplit, "torch")) == 1
    assert len(_pids(split, "torch")) == 2, "the torch variants ran in two worker processes"

    assert sorted(split.variants) == sorted(unsplit.variants) and len(split.variants) == 9
    for vid, v in unsplit.variants.items():
        other = split.variants[vid]
        assert v.status == other.status == "ok", (vid, v.error, other.error)
        assert digest_arrays(other.outputs) == digest_arrays(v.outputs), vid
    # The thread settings every worker started with are in the fingerprint, hence in the id; the
    # number of workers is an option of the run, not part of the environment.
    assert split.environment["torch.num_threads"] == unsplit.environment["torch.num_threads"]
    assert split.environment == unsplit.environment
    assert split.environment_id == unsplit.environment_id
    assert not any("worker" in key for key in split.environment)


# A case file that gives whichever torch worker imports it second one intra-op thread fewer (or
# more, on one core) than the first: that worker starts with other thread settings.
OTHER_THREADS = """
    import multiprocessing
    import os

    if multiprocessing.current_process().name.startswith("detharness-torch"):
        try:
            os.close(os.open({marker!r}, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            import torch
            torch.set_num_threads(torch.get_num_threads() - 1 if torch.get_num_threads() > 1 else 2)
"""


def test_a_split_worker_that_starts_with_other_thread_settings_runs_nothing(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    cases = write_cases(tmp_path / "cases", OTHER_THREADS.format(marker=str(tmp_path / "first")) + SPLIT_CASES)
    record = run(RunOptions(case_paths=[str(cases)], device="cpu", workers={"torch": 2}, keyword="float32"))
    assert record.options["workers"] == {"numpy": 1, "torch": 1}
    (why,) = record.options["workers_declined"]["torch"]
    assert why.startswith("worker 2: torch.num_threads: ")
    assert len(_pids(record, "torch")) == 1
    assert {v.status for v in record.variants.values()} == {"ok"}


def test_a_helper_is_worth_it_while_the_rest_of_a_share_outlasts_two_starts() -> None:
    # The default library's torch share from an empty cache, on 2 cores: the first cases took what
    # the table says, 40 s of it are left, starting the worker took 3 s.
    cold = dict(remaining_cost=40_000, done_cost=5_000, done_seconds=5.0, start_seconds=3.0, workers=1, most=2)
    assert helper_worthwhile(**cold)  # type: ignore[arg-type]
    # A warm cache: the exports are hits, the cases take a tenth of the table's (cold) prices.
    assert not helper_worthwhile(**{**cold, "done_seconds": 0.5})  # type: ignore[arg-type]
    # Nothing done yet (or nothing left), the limit reached, or a worker not started: no helper.
    for change in ({"done_cost": 0}, {"remaining_cost": 0}, {"workers": 2}, {"start_seconds": None}):
        assert not helper_worthwhile(**{**cold, **change})  # type: ignore[arg-type]
    assert helper_worthwhile(**{**cold, "most": 4, "workers": 3})  # type: ignore[arg-type]


def test_worker_limits_follow_the_option_within_the_number_of_cases(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    cases = write_cases(tmp_path / "cases", SPLIT_CASES)
    registry = discover([cases])
    options = RunOptions(case_paths=[str(cases)], device="cpu", workers={"torch": 5, "numpy": 2})
    by_backend: dict[str, list[Variant]] = {}
    for v in select_variants(registry, options):
        by_backend.setdefault(v.impl.backend, []).append(v)
    assert worker_limits(by_backend, options) == ({"numpy": 2, "torch": 3}, True)  # started at once
    options.workers = 2
    assert worker_limits(by_backend, options) == ({"numpy": 2, "torch": 2}, False)  # helpers, when worth it
    options.workers = None
    assert worker_limits(by_backend, options)[0]["torch"] == min(3, available_cores())
    options.in_process = True
    assert worker_limits(by_backend, options) == ({"numpy": 1, "torch": 1}, False)
