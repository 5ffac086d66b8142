#!/usr/bin/env bash
# The compare job's first step: merge each environment's shard bundles into one bundle per environment.
#   DH_BUNDLES     where the run jobs' artifacts were downloaded (default bundles); a sharded job's
#                  artifact is the folder bundle-<env>-shard-<I> (ci/plan.py with DH_SHARDS=N > 1)
#   DH_SHARDS_DIR  where the shard folders are moved out of the way (default shards)
# For every environment with shard folders: they move to $DH_SHARDS_DIR (ci/compare.sh compares
# every bundle it finds under bundles/), then `detharness merge` writes bundles/bundle-<env>/, the
# folder an unsharded run job's artifact lands in, so ci/compare.sh runs as it does without shards.
# Nothing to merge (the run jobs were not sharded): exit 0 and change nothing.
# Exit 1 when an environment's shards could not be merged (a shard missing or duplicated, or shards
# of other selections: detharness merge says which in one line); the other environments are merged
# all the same, and that environment is left out of the comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
bundles="${DH_BUNDLES:-bundles}"
shards="${DH_SHARDS_DIR:-shards}"
pattern='^bundle-(.+)-shard-([0-9]+)$'
envs=()
folders=()
while IFS= read -r folder; do
  name="$(basename "$folder")"
  if [[ "$name" =~ $pattern ]]; then
    env="${BASH_REMATCH[1]}"
    folders+=("$name")
    if [[ ! " ${envs[*]} " == *" $env "* ]]; then envs+=("$env"); fi
  fi
done < <(find "$bundles" -mindepth 1 -maxdepth 1 -type d -name 'bundle-*-shard-*' 2>/dev/null | sort -V)
if (( ${#envs[@]} == 0 )); then
  echo "No shard bundles under $bundles/: nothing to merge"
  exit 0
fi
note() {
  echo "$1"
  if [[ -n "${GITHUB_STEP_SUMMARY:-}" ]]; then echo "$1" >> "$GITHUB_STEP_SUMMARY"; fi
}
mkdir -p "$shards"
status=0
for env in "${envs[@]}"; do
  parts=()
  for name in "${folders[@]}"; do
    if [[ "$name" =~ $pattern && "${BASH_REMATCH[1]}" == "$env" ]]; then
      mv "$bundles/$name" "$shards/$name"
      parts+=("$shards/$name")
    fi
  done
  out="$bundles/bundle-$env"
  if [[ -e "$out" ]]; then
    note "merge-shards: $out exists beside the shards of $env (an unsharded and a sharded run?): not merged"
    status=1
    continue
  fi
  merged=0
  detharness merge "${parts[@]}" --out "$out" || merged=$?
  if (( merged == 0 )); then
    echo "merge-shards: ${#parts[@]} shard(s) of $env merged into $out"
  else
    rm -rf "$out"
    note "merge-shards: the ${#parts[@]} shard(s) of $env could not be merged (detharness merge exit $merged): $env is not compared"
    status=1
  fi
done
exit "$status"
