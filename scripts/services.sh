#!/usr/bin/env bash
# Start or stop the local backing services the tests use: Apache Cassandra
# (scripts/cassandra.sh) and the DynamoDB emulator (scripts/dynamodb.sh).
#   services.sh up [name...]      start (in parallel) those not running yet
#   services.sh down [name...]    stop them
#   services.sh missing           print the names of those not running
set -euo pipefail
cd "$(dirname "$0")/.."
ALL=(cassandra dynamodb)
action=${1:-}
shift || true
names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${ALL[@]}")

available() { [ -x "scripts/$1.sh" ]; }

case "$action" in
  up)
    pids=()
    for name in "${names[@]}"; do
      available "$name" || continue
      "scripts/$name.sh" start &
      pids+=($!)
    done
    failed=0
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    exit $failed
    ;;
  down)
    for name in "${names[@]}"; do
      available "$name" && "scripts/$name.sh" stop || true
    done
    ;;
  missing)
    for name in "${names[@]}"; do
      available "$name" || continue
      "scripts/$name.sh" status >/dev/null 2>&1 || echo "$name"
    done
    ;;
  *)
    echo "usage: $0 up|down|missing [service...]" >&2
    exit 2
    ;;
esac
