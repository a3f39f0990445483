#!/usr/bin/env bash
# Times a change in the native addon on one host: runs a benchmark command with an earlier
# build of the addon (A) and with the current one (B), alternating, ROUNDS times each, and
# prints each run's JSON lines prefixed with its build. Run from the project's root.
#   bash bench/ab-addon.sh EARLIER.node ROUNDS COMMAND...
# e.g. bash bench/ab-addon.sh .ab/before.node 2 node --import @oxc-node/core/register bench/gpt.ts --precision bf16
set -u
earlier=$1 rounds=$2
shift 2
addon=accelerate.linux-x64-gnu.node
keep=$(mktemp -d)
cp "$addon" "$keep/B.node"
cp "$earlier" "$keep/A.node"
# Each build is copied beside the addon and renamed over it (a process never loads a half-written file).
use() { cp "$keep/$1.node" "$addon.next" && mv "$addon.next" "$addon"; }
trap 'use B; rm -rf "$keep"' EXIT
for ((round = 1; round <= rounds; round++)); do
  for build in A B; do
    use "$build"
    "$@" 2>&1 | grep -E '^\{|rror' | sed "s/^/$build /"
  done
done
