"""The runner in this process (--in-process) and its selection rules."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from detharness.backends import Backend, register_backend
from detharness.cases import discover
from detharness.cli import main
from detharness.results import Outcome, Task
from detharness.runner import RunOptions, Worker, run, select_variants
from tests.conftest import write_cases


def test_selection_by_keyword_tag_backend_and_device(small_cases: Path) -> None:
    registry = discover([small_cases])
    ids = lambda **kw: [v.id for v in select_variants(registry, RunOptions(**kw))]  # noqa: E731
    assert ids(keyword="softmax and torch") == ["small/softmax[torch:cpu:float32:eager]",
                                                "small/softmax[torch:cuda:float32:eager]"]
    assert ids(backends=["torch"], device="cpu", keyword="scale") == ["small/scale[torch:cpu:float32:eager]",
                                                                      "small/scale[torch:cpu:float16:eager]"]
    assert ids(tags=["nope"]) == []


def test_the_reference_is_added_only_when_the_backend_check_is_asked_for(small_cases: Path) -> None:
    """RunOptions.checks: variants no chosen check looks at are not run; only the backend check reads the reference."""
    options = dict(case_paths=[str(small_cases)], keyword="softmax and torch", in_process=True)
    # The device check judges the CUDA variant and needs its CPU twin; no reference.
    device_only = run(RunOptions(checks=["device"], **options))  # type: ignore[arg-type]
    assert sorted(device_only.variants) == ["small/softmax[torch:cpu:float32:eager]",
                                            "small/softmax[torch:cuda:float32:eager]"]
    backend = run(RunOptions(checks=["backend"], device="cpu", **options))  # type: ignore[arg-type]
    assert sorted(backend.variants) == ["small/softmax[numpy:cpu:float64:eager]", "small/softmax[torch:cpu:float32:eager]"]


def test_in_process_run_records_outputs_and_adds_the_reference(small_cases: Path) -> None:
    record = run(RunOptions(case_paths=[str(small_cases)], keyword="numpy32", in_process=True))
    assert sorted(record.variants) == ["small/scale[numpy32:cpu:float32:eager]", "small/scale[numpy:cpu:float64:eager]"]
    v = record.variants["small/scale[numpy32:cpu:float32:eager]"]
    assert v.status == "ok" and v.outputs["y"].dtype.name == "float32" and v.seconds is not None
    assert record.environment["numpy.version"]
    assert record.cases["small/scale"].reference_variant == "small/scale[numpy:cpu:float64:eager]"


def test_a_worker_that_cannot_start_is_not_started_again_for_each_variant(tmp_path: Path) -> None:
    """A failed start (here the case file will not import in a worker) answers every variant with its
    reason; starting again for each variant cost a framework import, or a 300 s wait on a hang, apiece."""
    starts = tmp_path / "starts.txt"
    write_cases(tmp_path / "cases", f"""
        import multiprocessing

        from detharness import case

        if multiprocessing.current_process().name.startswith("detharness-"):
            with open({str(starts)!r}, "a") as f:
                f.write("start\\n")
            raise RuntimeError("not in a worker")

        c = case("w/fails", inputs=lambda rng: {{"x": rng.standard_normal(4)}})

        @c.impl("a", backend="numpy")
        def _(x):
            return {{"y": x}}
    """)
    worker = Worker("numpy", [str(tmp_path / "cases")], deterministic=False, timeout=60)
    assert "not in a worker" in (worker.start().error or "")
    assert worker.process is not None
    worker.process.join(30)  # gone, as it may already be when the runner hands it the first variant
    task = Task(id="w/fails[a:cpu:float32:eager]", case="w/fails", impl="a", device="cpu", dtype="float32",
                mode="eager", repeat=1, inputs={}, params={})
    for _ in range(2):
        reply = worker.run(task)
        assert reply.outcome == Outcome.ERROR and "not in a worker" in (reply.error or "")
    worker.stop()
    assert starts.read_text().splitlines() == ["start"]


@pytest.mark.parametrize("how", ["stopped", "orphaned"])
def test_a_worker_freezes_what_it_loaded_and_what_it_made_and_still_runs_its_atexit_handlers(tmp_path: Path,
                                                                                             how: str) -> None:
    """A worker freezes its heap once loaded (the collector's full passes skip the framework while
    the variants run) and again when told to stop or when it finds its pipe closed (the interpreter's
    last collections have nothing to walk). What the exit is for (atexit handlers) still happens."""
    seen = tmp_path / "seen.txt"
    write_cases(tmp_path / "cases", f"""
        import atexit
        import gc
        import multiprocessing

        from detharness import case

        KEPT = []

        def _note(when):
            with open({str(seen)!r}, "a") as f:
                f.write(f"{{when}} {{gc.get_freeze_count()}}\\n")

        if multiprocessing.current_process().name.startswith("detharness-"):
            atexit.register(_note, "exit")

        c = case("w/exits", inputs=lambda rng: {{"x": rng.standard_normal(4)}})

        @c.impl("a", backend="numpy")
        def _(x):
            _note("variant")
            KEPT.append([x])  # made after the load, kept to the end
            return {{"y": x}}
    """)
    worker = Worker("numpy", [str(tmp_path / "cases")], deterministic=False, timeout=60)
    assert worker.start().error is None
    process = worker.process
    assert process is not None and worker.conn is not None
    task = Task(id="w/exits[a:cpu:float32:eager]", case="w/exits", impl="a", device="cpu", dtype="float32",
                mode="eager", repeat=1, inputs={"x": np.ones(4, dtype=np.float32)}, params={})
    assert worker.run(task).outcome == Outcome.OK
    if how == "stopped":
        worker.stop()
    else:  # detharness gone without a word: the worker reads the end of its pipe
        worker.conn.close()
        process.join(30)
    assert process.exitcode == 0
    (when_run, during), (when_ended, at_exit) = [line.split() for line in seen.read_text().splitlines()]
    assert (when_run, when_ended) == ("variant", "exit")
    assert 0 < int(during) < int(at_exit)


class _MissingFramework(Backend):
    name = "notinstalled"
    import_name = "detharness_no_such_framework"
    install_hint = "pip install notinstalled-framework"


def test_an_exception_in_a_worker_thread_is_raised_by_the_run_not_lost_with_the_thread(small_cases: Path) -> None:
    """A variant's own failure is a reply; anything else raised while a worker thread runs its share
    (here the caller's progress callback) ends the run with that exception. It used to be printed by
    the dying thread and its variants recorded as "no result (worker lost)"."""
    import threading

    def progress(done: int, total: int, variant: str) -> None:
        raise RuntimeError(f"the progress bar broke at {variant}")

    outcome: list[BaseException | object] = []

    def go() -> None:
        try:
            outcome.append(run(RunOptions(case_paths=[str(small_cases)], backends=["numpy"], device="cpu",
                                          progress=progress)))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the run never ended"
    assert isinstance(outcome[0], RuntimeError) and "the progress bar broke at" in str(outcome[0])


def test_uninstalled_backend_asked_by_name_exits_2_with_the_hint(capsys: pytest.CaptureFixture[str]) -> None:
    register_backend(_MissingFramework(), replace=True)
    assert main(["run", "--backend", "notinstalled"]) == 2
    err = capsys.readouterr().err
    assert err == "detharness: error: backend 'notinstalled' is not installed: pip install notinstalled-framework\n"


@pytest.mark.slow
def test_deterministic_switches_are_set_in_the_workers_and_recorded(small_cases: Path) -> None:
    default = run(RunOptions(case_paths=[str(small_cases)], backends=["torch"], device="cpu", keyword="softmax"))
    strict = run(RunOptions(case_paths=[str(small_cases)], backends=["torch"], device="cpu", keyword="softmax",
                            deterministic=True))
    assert default.environment["torch.deterministic_algorithms"] is False
    assert strict.environment["torch.deterministic_algorithms"] is True
    assert strict.environment["torch.float32_matmul_precision"] == "highest"
    assert default.environment_id != strict.environment_id
    assert strict.variants["small/softmax[torch:cpu:float32:eager]"].status == "ok"


def test_a_backend_check_that_raises_is_that_variants_error_not_the_workers_end(monkeypatch: pytest.MonkeyPatch,
                                                                                 tmp_path: Path) -> None:
    """onnxruntime 1.31 refused the bfloat16 probe model (a newer IR version) inside supports():
    the exception ended the torch worker, and every later variant was "worker exited with code 1"."""
    import numpy as np

    from detharness.backends import load_backend
    from detharness.runner import execute

    write_cases(tmp_path / "cases", """
        from detharness import case

        c = case("w/probe", inputs=lambda rng: {"x": rng.standard_normal(4)})

        @c.impl("a", backend="numpy")
        def _(x):
            return {"y": x}
    """)
    registry = discover([str(tmp_path / "cases")])
    backend, _ = load_backend("numpy", deterministic=False)

    def broken(spec: object) -> tuple[bool, str]:
        raise RuntimeError("Unsupported model IR version: 14, max supported IR version: 13")

    monkeypatch.setattr(backend, "supports", broken)
    task = Task(id="w/probe[a:cpu:float32:eager]", case="w/probe", impl="a", device="cpu", dtype="float32",
                mode="eager", repeat=1, inputs={"x": np.zeros(4)}, params={})
    reply = execute(backend, registry.get("w/probe"), task)
    assert reply.outcome == Outcome.ERROR
    assert reply.error == ("detharness could not run this variant: RuntimeError: Unsupported model IR version: 14, "
                           "max supported IR version: 13")


def test_the_bfloat16_probe_model_is_one_every_onnxruntime_since_1_12_reads() -> None:
    pytest.importorskip("onnx")
    import onnx

    from detharness.backends import onnxruntime_backend

    model = onnx.load_from_string(onnxruntime_backend._probe_model("MatMul"))
    assert model.ir_version == 8 and model.opset_import[0].version == 17


@pytest.mark.parametrize(("user_value", "seen"), [(None, "false"), ("true", "true")])
def test_a_jax_worker_takes_gpu_memory_as_needed_unless_the_user_chose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      user_value: str | None, seen: str) -> None:
    """jax takes 75% of a GPU when it starts, and its variants ran out of memory on a GPU that a run
    shares among processes; a jax worker turns that off before jax starts, and keeps a value the user
    set."""
    pytest.importorskip("jax")
    if user_value is None:
        monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    else:
        monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", user_value)
    noted = tmp_path / "noted.txt"
    write_cases(tmp_path / "cases", f"""
        import os

        from detharness import case

        with open({str(noted)!r}, "a") as f:
            f.write(os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "unset") + "\\n")

        c = case("w/jax", inputs=lambda rng: {{"x": rng.standard_normal(4)}})

        @c.impl("a", backend="jax")
        def _(x):
            return {{"y": x}}
    """)
    worker = Worker("jax", [str(tmp_path / "cases")], deterministic=False, timeout=120)
    try:
        assert worker.start().error is None
    finally:
        worker.stop()
    # the worker's, before its case files were read; this process's own environment is untouched
    assert noted.read_text().split() == [seen]
    assert os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE") == user_value
