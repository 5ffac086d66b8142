"""A backend's variants split across several worker processes: same results, same environment id."""

from __future__ import annotations

from pathlib import Path

import pytest

from detharness.cases import discover
from detharness.record import RunRecord, digest_arrays
from detharness.runner import RunOptions, estimated_span, plan_workers, run, select_variants, worker_counts
from tests.conftest import write_cases

# Three torch cases (a case is never split, so three can go to two workers), each with reductions
# long enough that torch splits them across its intra-op threads: a worker with fewer threads would
# sum them in another order. Each implementation prints its process id, which lands in its log.
SPLIT_CASES = """
    import os

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
            return {"sum": x.float().sum(), "cols": x.float().sum(0), "mm": (x @ w).float()}

    for _name in ("split/a", "split/b", "split/c"):
        _numpy(_name)
"""


def _pids(record: RunRecord, backend: str) -> set[str]:
    return {v.log.stdout.split()[1] for v in record.variants.values() if v.backend == backend and v.log.stdout}


def test_split_and_unsplit_torch_workers_give_bitwise_equal_bundles_and_one_environment_id(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    cases = write_cases(tmp_path / "cases", SPLIT_CASES)
    unsplit = run(RunOptions(case_paths=[str(cases)], device="cpu", workers=1))
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


def test_the_automatic_rule_splits_the_critical_path_only_where_it_shortens_the_run() -> None:
    start = {"numpy": 500, "torch": 4000, "onnxruntime": 1500, "jax": 3000}
    # The default library on 2 cores: torch's exports outweigh the other backends together.
    library = {"numpy": 2000, "torch": 60000, "onnxruntime": 3000, "jax": 15000}
    units = {"numpy": 90, "torch": 40, "onnxruntime": 10, "jax": 30}
    assert worker_counts(library, units, 2, start=start) == {"numpy": 1, "torch": 2, "onnxruntime": 1, "jax": 1}
    assert estimated_span(library, {**dict.fromkeys(library, 1), "torch": 2}, 2, start) \
        < 0.95 * estimated_span(library, dict.fromkeys(library, 1), 2, start)
    # More cores: more torch workers, never more than its cases; one core, or --workers 1: no split.
    assert worker_counts(library, units, 8, start=start)["torch"] > 2
    assert worker_counts(library, {**units, "torch": 2}, 8, start=start)["torch"] == 2
    assert worker_counts(library, units, 1, start=start) == dict.fromkeys(library, 1)
    assert worker_counts(library, units, 2, start=start, most=1) == dict.fromkeys(library, 1)
    # Balanced shares, or a share shorter than a second worker's start: nothing to gain.
    assert worker_counts({"numpy": 5000, "torch": 5000}, {"numpy": 9, "torch": 9}, 2, start=start) \
        == {"numpy": 1, "torch": 1}
    assert worker_counts({"torch": 6000}, {"torch": 9}, 2, start=start) == {"torch": 1}  # saves 3 s, costs 4
    assert worker_counts({}, {}, 2) == {}


def test_plan_workers_takes_a_mapping_as_given_within_the_number_of_cases(tmp_path: Path) -> None:
    cases = write_cases(tmp_path / "cases", SPLIT_CASES)
    registry = discover([cases])
    options = RunOptions(case_paths=[str(cases)], device="cpu", workers={"torch": 5, "numpy": 2})
    by_backend: dict[str, list] = {}  # type: ignore[type-arg]
    for v in select_variants(registry, options):
        by_backend.setdefault(v.impl.backend, []).append(v)
    assert plan_workers(by_backend, options) == {"numpy": 2, "torch": 3}
    options.in_process = True
    assert plan_workers(by_backend, options) == {"numpy": 1, "torch": 1}
