"""The README's promises: its case example runs as written, its commands name real options."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

README = (ROOT / "README.md").read_text()

pytestmark = pytest.mark.slow


def _code_block_after(heading: str, language: str) -> str:
    section = README.split(heading, 1)[1]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match, f"no {language} block after {heading!r}"
    return match.group(1)


def test_write_your_own_case_example_runs_as_written(tmp_path: Path) -> None:
    folder = tmp_path / "my_cases"
    folder.mkdir()
    (folder / "scaler.py").write_text(_code_block_after("## Write your own case", "python"))
    command = _code_block_after("## Write your own case", "sh").split()
    assert command[:4] == ["detharness", "run", "--cases", "my_cases/"]
    result = run_cli(*command[1:], "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    statuses = {(r["variant"], r["status"]) for r in json.loads(result.stdout)["results"]}
    assert ("mine/scaler[serving:cpu:float32:eager]", "close") in statuses
    assert (tmp_path / "bundles" / "mine" / "manifest.json").exists()


def test_the_two_opening_commands_use_the_pins() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", README, re.S)[:2]
    assert all('pip install -e ".[all]" -c ci/pins/cpu.txt' in block for block in blocks)
    assert "detharness run" in blocks[0] and "--report" in blocks[0]
    test_command = "python -m pytest " + blocks[1].split("python -m pytest", 1)[1].strip()
    assert "--dh-cases cases" in test_command  # the case library runs once, through the plugin
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()  # CI runs the README's command


def test_env_json_lists_backend_keys() -> None:
    result = run_cli("env", "--json", "--backend", "torch")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data["id"]) == 64
    assert data["fingerprint"]["torch.cpu_capability"]
    assert "env.ATEN_CPU_CAPABILITY" in data["fingerprint"]
