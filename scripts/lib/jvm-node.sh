# shellcheck shell=bash
# What the scripts of the local JVM services (cassandra.sh, kafka.sh) share:
# messages, the pid of the node they started, installing a missing tool, and
# stopping the node. Source it after setting:
#   NODE          the service's name, as messages show it
#   PIDFILE       where the node's pid is recorded
#   MAIN_PATTERN  a pattern its command line matches (guards against reused pids)

say() { echo "$NODE: $*" >&2; }

python_bin() {
  if [ -x .venv/bin/python ]; then echo .venv/bin/python; else echo python3; fi
}

# The recorded pid, if that process is still this node (not a reused pid).
running_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid=$(cat "$PIDFILE")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$MAIN_PATTERN" || return 1
  echo "$pid"
}

# Java and Maven come with the development image; elsewhere install them from
# Debian's packages when we may, or say what is missing.
need() {
  local command=$1 package=$2
  command -v "$command" >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing $package for $command"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package" >&2 \
      || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package" >&2; }
  fi
  command -v "$command" >/dev/null || { say "$command is needed (package $package)"; exit 1; }
}

java_major() { "$1" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1; }

# SIGTERM (a controlled shutdown, so the next start needs no recovery), and
# SIGKILL after 30 s.
stop() {
  local pid
  if ! pid=$(running_pid); then
    rm -f "$PIDFILE"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 120); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "pid $pid did not stop within 30s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
  say "stopped pid $pid"
}
