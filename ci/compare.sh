#!/usr/bin/env bash
# The compare job: every downloaded bundle against the baseline job's, N-way, with attribution.
#   DH_BASELINE  job name of the baseline (default cpu-x86_64); the first bundle if it is absent
#   DH_FAIL_ON   statuses that fail the job (default: detharness compare's own, flipped,diverged,mismatch,error)
# Bundles are in bundles/bundle-<job>/ (one folder per artifact). Writes reports/compare.md, .json,
# .html (one self-contained page; needs the html extra, jinja2) and .xml (JUnit), all uploaded as the
# determinism-report artifact (on main the publish job puts the .html on GitHub Pages), and the
# markdown, cut to fit, into $GITHUB_STEP_SUMMARY. The exit status is compare's: 1 when an output
# diverged between environments.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p reports
baseline_name="bundle-${DH_BASELINE:-cpu-x86_64}"
bundles=()
while IFS= read -r manifest; do
  bundles+=("$(dirname "$manifest")")
done < <(find bundles -mindepth 2 -maxdepth 2 -name manifest.json | sort)
if (( ${#bundles[@]} < 2 )); then
  message="Found ${#bundles[@]} bundle(s) under bundles/: nothing to compare (did the run jobs fail?)"
  echo "$message" >&2
  if [[ -n "${GITHUB_STEP_SUMMARY:-}" ]]; then echo "$message" >> "$GITHUB_STEP_SUMMARY"; fi
  exit 1
fi
ordered=()
if [[ -d "bundles/$baseline_name" ]]; then
  ordered+=("bundles/$baseline_name")
fi
for bundle in "${bundles[@]}"; do
  if [[ "$bundle" != "bundles/$baseline_name" ]]; then ordered+=("$bundle"); fi
done
status=0
# --match-device any: a GPU job's bundle holds CUDA variants only, held against the CPU baseline's.
detharness compare "${ordered[@]}" --match-device any --all-pairs \
  ${DH_FAIL_ON:+--fail-on "$DH_FAIL_ON"} \
  --report reports/compare.md --report reports/compare.json \
  --report reports/compare.html --report reports/compare.xml || status=$?
if [[ -n "${GITHUB_STEP_SUMMARY:-}" && -f reports/compare.md ]]; then
  python ci/summary.py reports/compare.md >> "$GITHUB_STEP_SUMMARY"
fi
exit "$status"
