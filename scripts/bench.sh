#!/usr/bin/env bash
# `make bench`: every scenario of issue 8 beside its baseline (bench/README.md).
# Installs ghz into .tools/bin if missing, starts Cassandra, the DynamoDB
# emulator and Kafka when they are not running and a selected scenario uses
# them (and stops only those it started), then runs bench/run.py, which
# prints the table and writes bench/results/latest.json.
#   scripts/bench.sh [--duration S] [--backends sqlite,cassandra,dynamodb]
#                    [--only SCENARIO,...] [--profile]
# BENCH_DURATION_S and BENCH_BACKENDS set the same defaults.
set -euo pipefail
cd "$(dirname "$0")/.."

GHZ_VERSION=v0.120.0
BACKENDS=${BENCH_BACKENDS:-sqlite,cassandra,dynamodb}
ONLY=""  # every scenario
for ((i = 1; i <= $#; i++)); do
  j=$((i + 1))
  case "${!i}" in
    --backends) BACKENDS=${!j:-} ;;
    --backends=*) BACKENDS=${!i#--backends=} ;;
    --only) ONLY=${!j:-} ;;
    --only=*) ONLY=${!i#--only=} ;;
  esac
done

# Whether the run uses a service: a backend when it is selected, Kafka when
# its scenario is (it runs on the embedded store).
used() {
  case "$1" in
    kafka) used sqlite && { [ -z "$ONLY" ] || [[ ",$ONLY," == *",kafka,"* ]]; } ;;
    *) [[ ",$BACKENDS," == *",$1,"* ]] ;;
  esac
}

if [ ! -x .venv/bin/python ]; then
  echo "bench: .venv is missing; run 'make install' first" >&2
  exit 2
fi
if [ ! -x .tools/bin/ghz ]; then
  echo "bench: installing ghz ${GHZ_VERSION} into .tools/bin" >&2
  mkdir -p .tools/bin
  GOBIN="$PWD/.tools/bin" go install "github.com/bojand/ghz/cmd/ghz@${GHZ_VERSION}"
fi

started=()
stop_started() {
  for name in "${started[@]}"; do
    ./scripts/services.sh down "$name" >/dev/null 2>&1 || true
  done
}
trap stop_started EXIT

for name in $(./scripts/services.sh missing); do
  used "$name" || continue
  echo "bench: starting $name (stopped again at the end)" >&2
  if ./scripts/services.sh up "$name" >&2; then
    started+=("$name")
  else
    echo "bench: $name did not start; its scenarios are skipped" >&2
  fi
done

.venv/bin/python -m bench.run "$@"
