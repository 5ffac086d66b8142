#!/usr/bin/env bash
# One prepared check for a GPU machine with no network, run from this source tree, in under 5 minutes.
#
# The machine already has torch (CUDA), jax, onnxruntime (CPU provider), safetensors, ml_dtypes,
# tabulate and pytest; it may lack hypothesis, onnx, onnxscript and pandas, and nothing is
# installed: detharness runs from the tree (PYTHONPATH), and pytest collects only the plugin's case
# items (no test modules, which import hypothesis and onnx). Steps, each under `timeout`:
#   1. the GPU as the driver and each framework see it, and the environment fingerprint;
#   2. pytest -m cuda --dh-require-cuda: every CUDA variant, failing (not skipping) without a GPU;
#   3. detharness run --device all: every variant on CPU and GPU, with the CUDA-vs-CPU device check.
#
# Usage: ci/gpu-check.sh [OUT_DIR]        (default gpu-check-out/; the bundle and reports go there)
#   DH_KEYWORD=EXPR     only variants matching this -k expression
#   DH_ALLOW_NO_GPU=1   exit 0 where no GPU is seen (to try the script on a CPU machine)
# Exit codes: 0 a GPU was seen and nothing failed on it; 1 a CUDA check failed: a pytest -m cuda item
#   failed, or a CUDA variant errored or diverged (from its CPU run or its reference) in step 3;
#   divergences between CPU implementations are printed but are not this script's business;
# 2 the tree or its dependencies cannot be used here (detharness does not import);
# 4 no GPU was seen: steps 1 and 3 still ran on the CPU and step 2 was skipped, so nothing was
#   checked on a GPU (0 instead under DH_ALLOW_NO_GPU=1).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-gpu-check-out}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$root" || exit 2
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
# Only the detharness plugin: an installed plugin (or an installed detharness) must not change what runs.
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
export PYTHONDONTWRITEBYTECODE=1
python="${PYTHON:-python3}"
# Step budgets (seconds); the sum stays under 5 minutes with room for start-up.
t_env=60 t_pytest=100 t_run=110 t_variant=60
keyword=()
if [[ -n "${DH_KEYWORD:-}" ]]; then keyword=(-k "$DH_KEYWORD"); fi
started=$SECONDS

section() { printf '\n===== %s (%ss elapsed) =====\n' "$1" "$((SECONDS - started))"; }

section "detharness from $root"
if ! timeout "$t_env" "$python" -c "import detharness, sys; print('detharness', detharness.__version__, 'python', sys.version.split()[0])"; then
  echo "gpu-check: detharness does not import from the tree with $python: missing dependencies?" >&2
  exit 2
fi

section "GPU as the driver sees it"
if command -v nvidia-smi >/dev/null 2>&1; then
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true
else
  echo "nvidia-smi: not found"
fi

section "GPU as each framework sees it"
timeout "$t_env" "$python" - <<'PY' | tee "$out/devices.txt"
import importlib.util

def show(name, probe):
    if importlib.util.find_spec(name) is None:
        print(f"{name}: not installed")
        return
    try:
        print(f"{name}: {probe()}")
    except Exception as exc:  # a broken CUDA install is exactly what this step should print
        print(f"{name}: error: {type(exc).__name__}: {exc}")

def torch_probe():
    import torch
    if not torch.cuda.is_available():
        return f"{torch.__version__}, CUDA build {torch.version.cuda}, no GPU seen"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"{torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, GPUs {names}"

def jax_probe():
    import jax
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    return f"{jax.__version__}, backend {jax.default_backend()}, GPUs {gpus or 'none'}"

def ort_probe():
    import onnxruntime
    return f"{onnxruntime.__version__}, providers {onnxruntime.get_available_providers()}"

show("torch", torch_probe)
show("jax", jax_probe)
show("onnxruntime", ort_probe)
PY
if grep -q "GPUs \[" "$out/devices.txt"; then
  gpu_seen=1
else
  gpu_seen=0
fi
if (( gpu_seen )); then echo "gpu-check: a GPU is seen"; else echo "gpu-check: NO GPU IS SEEN by torch or jax"; fi

section "environment fingerprint"
timeout "$t_env" "$python" -m detharness env | tee "$out/env.txt"

failed=0
section "pytest -m cuda --dh-require-cuda (case items only)"
if (( gpu_seen )); then
  # `cases` as the only path: pytest finds no test module there, the plugin adds the case items.
  timeout --kill-after=10 "$t_pytest" "$python" -m pytest cases -p detharness.pytest_plugin -p no:cacheprovider \
    --dh-cases cases -m cuda --dh-require-cuda -q -rfE "${keyword[@]}" 2>&1 | tee "$out/pytest.txt"
  status=${PIPESTATUS[0]}
  echo "pytest exit status: $status"
  if (( status != 0 )); then failed=1; fi
else
  echo "skipped: no GPU is seen, so --dh-require-cuda would fail every CUDA item"
fi

section "detharness run --device all"
rm -rf "$out/bundle"
timeout --kill-after=10 "$t_run" "$python" -m detharness run --cases cases --device all --timeout "$t_variant" \
  "${keyword[@]}" --out "$out/bundle" --report "$out/report.md" --report "$out/report.json" 2>&1 | tee "$out/run.txt"
status=${PIPESTATUS[0]}
echo "detharness run exit status: $status"
case "$status" in
  0|1) ;;  # 1: something diverged somewhere; the verdicts below decide whether it was on the GPU
  124|137) echo "gpu-check: detharness run passed its ${t_run}s budget" >&2; failed=1 ;;
  *) echo "gpu-check: detharness run could not run (exit $status)" >&2; exit 2 ;;
esac

section "verdicts"
if [[ -f "$out/report.json" ]]; then
  "$python" - "$out/report.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
print("summary:", ", ".join(f"{n} {s}" for s, n in report["summary"].items()))
device = [r for r in report["results"] if r["check"] == "device"]
print(f"device check (CUDA against CPU): {len(device)} outputs")
for r in device:
    print(f"  {r['status']:9} {r['variant']} {r['output'] or ''} max_ulp={r.get('max_ulp')} max_abs={r.get('max_abs')}")
bad = [r for r in report["results"] if r["status"] in ("flipped", "diverged", "mismatch", "error") and r["check"] != "device"]
for r in bad[:40]:
    print(f"  {r['status']:9} {r['check']:8} {r['variant']} {(r['message'] or '').splitlines()[0][:120]}")
if len(bad) > 40:
    print(f"  ... {len(bad) - 40} more in report.json")
on_gpu = [r for r in report["results"] if ":cuda:" in (r["variant"] or "") and r["status"] in ("flipped", "diverged", "mismatch", "error")]
print(f"CUDA variants that failed: {len(on_gpu)}")
sys.exit(3 if on_gpu else 0)
PY
  if (( $? == 3 )); then failed=1; fi
fi

section "done in $((SECONDS - started))s; files in $out"
if (( failed )); then exit 1; fi
if (( ! gpu_seen )); then
  if [[ "${DH_ALLOW_NO_GPU:-}" == "1" ]]; then exit 0; fi
  exit 4
fi
exit 0
