#!/usr/bin/env bash
# The local DynamoDB emulator for tests: moto's server mode (installed in .venv
# as moto[server]) over real HTTP on 127.0.0.1:8000. State lives in memory, so
# a restart starts empty. Logs and pid go to .services/dynamodb/.
#   dynamodb.sh start    start it unless it already answers; wait until it does
#   dynamodb.sh stop     stop the one started here (no-op if none)
#   dynamodb.sh status   exit 0 iff it answers over HTTP
set -euo pipefail
cd "$(dirname "$0")/.."

HOST=${METAAS_DYNAMODB_HOST:-127.0.0.1}
PORT=${METAAS_DYNAMODB_PORT:-8000}
DIR=.services/dynamodb
PID_FILE=$DIR/moto.pid
LOG_FILE=$DIR/moto.log
START_TIMEOUT_S=30

answers() {
  .venv/bin/python - "$HOST" "$PORT" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(f"http://{sys.argv[1]}:{sys.argv[2]}/moto-api/", timeout=2).read()
EOF
}

our_pid() {
  [ -f "$PID_FILE" ] || return 1
  local pid
  pid=$(cat "$PID_FILE")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

start() {
  if answers; then
    echo "dynamodb: already answering on http://$HOST:$PORT"
    return 0
  fi
  if [ ! -x .venv/bin/moto_server ]; then
    echo "dynamodb: .venv/bin/moto_server is missing; run 'make install'" >&2
    return 1
  fi
  mkdir -p "$DIR"
  # setsid: the emulator outlives this script and ignores the caller's signals.
  setsid .venv/bin/moto_server -H "$HOST" -p "$PORT" >>"$LOG_FILE" 2>&1 </dev/null &
  echo $! >"$PID_FILE"
  local waited=0
  until answers; do
    if ! our_pid >/dev/null; then
      echo "dynamodb: moto_server exited; see $LOG_FILE:" >&2
      tail -n 20 "$LOG_FILE" >&2 || true
      return 1
    fi
    if [ "$waited" -ge $((START_TIMEOUT_S * 10)) ]; then
      echo "dynamodb: not answering after ${START_TIMEOUT_S}s; see $LOG_FILE" >&2
      stop
      return 1
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  echo "dynamodb: moto server answering on http://$HOST:$PORT (pid $(cat "$PID_FILE"))"
}

stop() {
  local pid
  if pid=$(our_pid); then
    kill "$pid"
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    echo "dynamodb: stopped (pid $pid)"
  fi
  rm -f "$PID_FILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    if answers; then
      echo "dynamodb: answering on http://$HOST:$PORT"
    else
      echo "dynamodb: not answering on http://$HOST:$PORT"
      exit 1
    fi
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
