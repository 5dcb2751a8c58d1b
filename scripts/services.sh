#!/usr/bin/env bash
# Start or stop the local backing services the tests use: Apache Cassandra
# (scripts/cassandra.sh), the DynamoDB emulator (scripts/dynamodb.sh) and
# Apache Kafka (scripts/kafka.sh).
#   services.sh up [name...]      start (in parallel) those not running yet
#   services.sh down [name...]    stop them
#   services.sh missing [name...] print the names of those not running
# Without names, each acts on DEFAULT, the set `make test` and `make
# services-up` start and stop.
set -euo pipefail
cd "$(dirname "$0")/.."
DEFAULT=(cassandra dynamodb kafka)
KNOWN=("${DEFAULT[@]}")
action=${1:-}
shift || true
names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${DEFAULT[@]}")
for name in "${names[@]}"; do
  case " ${KNOWN[*]} " in
    *" $name "*) ;;
    *) echo "services.sh: unknown service '$name' (known: ${KNOWN[*]})" >&2; exit 2 ;;
  esac
done

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
      if available "$name"; then "scripts/$name.sh" stop || true; fi
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
