#!/usr/bin/env bash
# One matrix job: run the cases here into bundles/$DH_JOB, reports into reports/, summary to GitHub.
#   DH_JOB      unique job name (names the bundle folder and the artifact)
#   DH_DEVICE   cpu, cuda or all (default cpu)
#   DH_KEYWORD  optional -k expression
#   DH_SHARD    optional I/N: run shard I of N of the selection (detharness run --shard); the compare
#               job merges an environment's N shard bundles into one (ci/merge-shards.sh)
# Exit 0 when the bundle was written: divergences inside one environment (an implementation
# against its reference) are in the report, and the compare job decides across environments.
# Exit 2 or 3 when detharness could not run (bad usage, internal error).
set -euo pipefail
cd "$(dirname "$0")/.."
job="${DH_JOB:?set DH_JOB to the job name}"
device="${DH_DEVICE:-cpu}"
mkdir -p bundles reports
args=(run --device "$device" --out "bundles/$job" --report "reports/$job.md" --report "reports/$job.json")
if [[ -n "${DH_KEYWORD:-}" ]]; then
  args+=(-k "$DH_KEYWORD")
fi
if [[ -n "${DH_SHARD:-}" ]]; then
  args+=(--shard "$DH_SHARD")
fi
status=0
detharness "${args[@]}" || status=$?
if [[ -n "${GITHUB_STEP_SUMMARY:-}" && -f "reports/$job.md" ]]; then
  python ci/summary.py "reports/$job.md" >> "$GITHUB_STEP_SUMMARY"
fi
if (( status >= 2 )); then
  echo "detharness run failed with exit $status" >&2
  exit "$status"
fi
test -f "bundles/$job/manifest.json"
