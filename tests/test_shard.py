"""``detharness run --shard I/N`` and ``detharness merge``: the partition, and a sharded run merged
equal to an unsharded one."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detharness import record as record_mod
from detharness import shard
from detharness.errors import UsageError
from tests.conftest import run_cli, write_cases

# Four numpy cases of different sizes; "tiny/c" has a reference and two float32 variants.
SHARD_CASES = """
    import numpy as np

    from detharness import case

    for name, n in (("tiny/a", 8), ("tiny/b", 16), ("tiny/c", 32), ("tiny/d", 64)):
        c = case(name, tolerance="ulp(8)", inputs=lambda rng, n=n: {"x": rng.standard_normal((n, 4)).astype("float32")})

        @c.impl("ref", backend="numpy", reference=True, dtypes=("float64",))
        def _(x):
            return {"y": np.tanh(x) * 2}

        @c.impl("f32", backend="numpy", dtypes=("float32",))
        def _(x):
            return {"y": np.tanh(x) * np.float32(2)}

        if name == "tiny/c":
            @c.impl("sum", backend="numpy", dtypes=("float32",))
            def _(x):
                return {"y": np.tanh(x) + np.tanh(x)}
"""


# -- the partition -----------------------------------------------------------------------------


def test_parse_shard() -> None:
    assert shard.parse_shard("2/4") == (2, 4)
    assert shard.parse_shard(" 1/1 ") == (1, 1)
    for bad in ("0/3", "4/3", "1/0", "0/0", "a/b", "1/", "2", "-1/3", "1/3/4", ""):
        with pytest.raises(UsageError):
            shard.parse_shard(bad)


_units = st.dictionaries(st.text("abcdefgh/", min_size=1, max_size=6), st.integers(1, 10_000), max_size=30)


@settings(max_examples=200, deadline=None)
@given(units=_units, count=st.integers(1, 5))
def test_partition_covers_each_unit_once_balanced_and_stable(units: dict[str, int], count: int) -> None:
    shards = shard.partition(units, count)
    assert len(shards) == count
    taken = [u for s in shards for u in s]
    assert sorted(taken) == sorted(units)  # every unit exactly once
    assert shard.partition(dict(reversed(list(units.items()))), count) == shards  # not the dict's order
    if units:
        loads = [sum(units[u] for u in s) for s in shards]
        # Greedy list scheduling: no shard ends more than the largest unit above the mean.
        assert max(loads) <= sum(loads) / count + max(units.values())
        if len(units) >= count:
            assert all(s for s in shards)


_variants = st.lists(st.tuples(st.sampled_from("abcdef"), st.text("xyz", min_size=1, max_size=3),
                               st.sampled_from(["numpy", "torch", "jax"])), max_size=40, unique_by=lambda t: t[:2])


@settings(max_examples=100, deadline=None)
@given(variants=_variants, count=st.integers(1, 5), costs=st.dictionaries(st.text("xyz", min_size=1, max_size=3),
                                                                          st.floats(0.001, 5.0)))
def test_a_cases_variants_stay_together(variants: list[tuple[str, str, str]], count: int,
                                        costs: dict[str, float]) -> None:
    triples = [(case, f"{case}[{impl}:cpu:float32:eager]", backend) for case, impl, backend in variants]
    table = {"costs": {f"{c}[{k}:cpu:float32:eager]": s for k, s in costs.items() for c in "abcdef"},
             "defaults": {"numpy": 0.01, "torch": 0.5}, "default": 0.1}
    units = shard.unit_costs(triples, **table)
    shards = shard.partition(units, count)
    owner = {case: i for i, s in enumerate(shards) for case in s}
    for case, vid, backend in triples:
        assert case in owner  # so all of one case's variants go to shard owner[case]
        assert units[case] >= shard.variant_cost(vid, backend, **table)
    assert set(owner) == {t[0] for t in triples}


def test_costs_come_from_the_table_with_defaults() -> None:
    table = {"costs": {"a[x:cpu:float32:eager]": 2.0}, "defaults": {"torch": 0.25}, "default": 0.004}
    assert shard.variant_cost("a[x:cpu:float32:eager]", "torch", **table) == 2000
    assert shard.variant_cost("b[x:cpu:float32:eager]", "torch", **table) == 250
    assert shard.variant_cost("b[x:cpu:float32:eager]", "jax", **table) == 4
    # The shipped table: every value a positive time.
    from detharness import shard_costs

    assert shard_costs.DEFAULT > 0 and all(s > 0 for s in shard_costs.COSTS.values())
    # Balanced by cost: one heavy case alone against several light ones.
    assert shard.partition({"heavy": 100, "l1": 30, "l2": 30, "l3": 30}, 2) == [["heavy"], ["l1", "l2", "l3"]]


def test_selection_hash_covers_ids_and_settings() -> None:
    base = shard.selection_hash(["b", "a"], {"repeat": 1})
    assert base == shard.selection_hash(["a", "b"], {"repeat": 1})
    assert base != shard.selection_hash(["a"], {"repeat": 1})
    assert base != shard.selection_hash(["a", "b"], {"repeat": 2})


# -- a sharded run, merged ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An unsharded run of SHARD_CASES and its three shards (the runs are shared by the tests)."""
    root = tmp_path_factory.mktemp("sharded")
    cases = write_cases(root / "cases", SHARD_CASES)
    paths = {"cases": cases, "full": root / "full"}
    result = run_cli("run", "--cases", str(cases), "--in-process", "--out", str(root / "full"))
    assert result.returncode == 0, result.stderr
    for i in (1, 2, 3):
        paths[f"s{i}"] = root / f"s{i}"
        result = run_cli("run", "--cases", str(cases), "--in-process", "--shard", f"{i}/3", "--out", str(paths[f"s{i}"]))
        assert result.returncode == 0, result.stderr
    return paths


def test_shards_split_by_case_and_mark_their_variants(sharded: dict[str, Path]) -> None:
    full = record_mod.load(sharded["full"])
    parts = [record_mod.load(sharded[f"s{i}"]) for i in (1, 2, 3)]
    assert full.options["shard"] is None and all(v.shard is None for v in full.variants.values())
    assert sorted(vid for p in parts for vid in p.variants) == sorted(full.variants)
    owners: dict[str, int] = {}
    selections = set()
    for i, p in enumerate(parts, start=1):
        assert p.options["shard"]["index"] == i and p.options["shard"]["count"] == 3
        assert p.variants, "4 cases in 3 shards: none is empty"
        for v in p.variants.values():
            assert v.shard is not None and v.shard["index"] == i and v.shard["count"] == 3
            selections.add(v.shard["selection"])
            assert owners.setdefault(v.case, i) == i  # a case's variants (reference included) together
    assert len(selections) == 1 and parts[0].options["shard"]["selection"] in selections


def test_merged_shards_equal_the_unsharded_run(sharded: dict[str, Path], tmp_path: Path) -> None:
    merged = tmp_path / "merged"
    # Given in any order.
    result = run_cli("merge", str(sharded["s3"]), str(sharded["s1"]), str(sharded["s2"]), "--out", str(merged),
                     "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["results"]
    result = run_cli("compare", str(sharded["full"]), str(merged), "--format", "json")
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)["results"]
    assert results and {r["status"] for r in results} == {"identical"}

    full, joined = record_mod.load(sharded["full"]), record_mod.load(merged)
    assert list(joined.variants) == list(full.variants) and list(joined.cases) == list(full.cases)
    assert [r.to_json() for r in joined.verdicts] == [r.to_json() for r in full.verdicts]
    assert joined.environment == full.environment and joined.environment_id == full.environment_id
    assert joined.options == full.options
    assert all(v.shard is None for v in joined.variants.values())
    manifest = json.loads((merged / "manifest.json").read_text())
    assert all(v["shard"] is None for v in manifest["variants"].values())
    # The --out rules of run: a bundle already there is refused without --replace.
    again = run_cli("merge", str(sharded["s1"]), str(sharded["s2"]), str(sharded["s3"]), "--out", str(merged))
    assert again.returncode == 2 and "already there" in again.stderr


def test_merge_refusals(sharded: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from detharness.cli import main

    def _refusal(*args: str) -> str:
        capsys.readouterr()
        assert main(["merge", *args], out=io.StringIO()) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("detharness: error: merge: ")
        return lines[0]

    s1, s2, s3, full = (str(sharded[k]) for k in ("s1", "s2", "s3", "full"))
    out = str(tmp_path / "out")
    assert "shard 2 of 3 missing" in _refusal(s1, s3, "--out", out)
    assert "shards 1, 3 of 3 missing" in _refusal(s2, "--out", out)
    assert "shard 2/3 given twice" in _refusal(s1, s2, s2, s3, "--out", out)
    assert "not a shard bundle" in _refusal(full, s1, "--out", out)
    assert "is one of the shard bundles" in _refusal(s1, s2, s3, "--out", s1, "--replace")
    assert not Path(out).exists()  # nothing written for a refusal

    # A shard of another selection (another -k).
    other = tmp_path / "other"
    result = run_cli("run", "--cases", str(sharded["cases"]), "--in-process", "-k", "tiny/a or tiny/b",
                     "--shard", "2/3", "--out", str(other))
    assert result.returncode == 0, result.stderr
    assert "different selections" in _refusal(s1, str(other), s3, "--out", out)

    # Two shards that disagree on a fingerprint key both record.
    edited = tmp_path / "edited"
    record = record_mod.load(s2)
    record.environment["numpy.version"] = "0.0.1"
    record_mod.save(record, edited)
    line = _refusal(s1, str(edited), s3, "--out", out)
    assert "disagree on fingerprint key 'numpy.version'" in line and "0.0.1" in line

    # Keys only one shard records (another backend's) are no disagreement: the union is kept.
    extra = tmp_path / "extra"
    record = record_mod.load(s2)
    record.environment["torch.version"] = "9.9"
    record_mod.save(record, extra)
    assert main(["merge", s1, str(extra), s3, "--out", str(tmp_path / "union")], out=io.StringIO()) == 0
    merged = record_mod.load(tmp_path / "union")
    assert merged.environment["torch.version"] == "9.9"
    from detharness import environment as env_mod

    assert merged.environment_id == env_mod.environment_id(merged.environment)


def test_shard_usage_errors(sharded: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from detharness.cli import main

    for bad in ("0/3", "4/3", "x", "1/0"):
        capsys.readouterr()
        assert main(["run", "--cases", str(sharded["cases"]), "--in-process", "--shard", bad], out=io.StringIO()) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "--shard" in err, err


def test_an_empty_shard_exits_0_with_a_note(sharded: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "empty"
    result = run_cli("run", "--cases", str(sharded["cases"]), "--in-process", "--shard", "5/5", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "shard 5/5 of this selection is empty: nothing to run" in result.stderr
    empty = record_mod.load(out)
    assert not empty.variants and empty.options["shard"]["index"] == 5
    # A selection of nothing at all is still a usage error.
    result = run_cli("run", "--cases", str(sharded["cases"]), "--in-process", "-k", "nosuchthing", "--shard", "1/2")
    assert result.returncode == 2 and "selects no variant" in result.stderr
