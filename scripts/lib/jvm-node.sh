# shellcheck shell=bash
# What the scripts of the local JVM services (cassandra.sh, kafka.sh) share:
# messages, the pid of the node they started, installing a missing tool, and
# stopping the node. Source it after setting:
#   NODE          the service's name, as messages show it
#   PIDFILE       where the node's pid is recorded
#   MAIN_PATTERN  a pattern its command line matches (guards against reused pids)
#   PROTOCOL      what answering means in messages ("CQL", "Kafka")
#   MAIN_LOG      the node's own log file under $RUN/logs
# and RUN, HOST, PORT, HEAP, START_TIMEOUT_S, DIST (where the node's jars are
# cached), TEMPLATES (its pom.xml and configuration templates), and the
# functions answers (does the node answer?), jvm_options (one JVM option per
# line) and boot (fetch, configure, then `launch` the node).

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

# The Maven plugin that copies a pom's dependencies.
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

# `maven_jars WORK PROPERTY=VALUE`: the runtime dependencies of
# $TEMPLATES/pom.xml, at that version property, into WORK/dist/lib; on
# failure print Maven's log and exit.
maven_jars() {
  local work=$1 version=$2
  if ! mvn -B -q -f "$TEMPLATES/pom.xml" "$DEPENDENCY_PLUGIN:copy-dependencies" \
      -D"$version" -DincludeScope=runtime \
      -DoutputDirectory="$work/dist/lib" >"$work/mvn.log" 2>&1; then
    cat "$work/mvn.log" >&2
    say "could not fetch ${version#*=} with Maven"
    exit 1
  fi
}

# `install_dist WORK`: WORK/dist becomes $DIST, marked complete, and WORK goes.
install_dist() {
  local work=$1
  rm -rf "$DIST"
  mkdir -p "$(dirname "$DIST")"
  mv "$work/dist" "$DIST"
  touch "$DIST/.complete"
  rm -rf "$work"
  say "cached in ${DIST#"$PWD"/} ($(find "$DIST/lib" -name '*.jar' | wc -l) jars)"
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

log_tail() {
  for file in "$RUN/logs/$MAIN_LOG" "$RUN/logs/stdout.log"; do
    if [ -s "$file" ]; then
      echo "--- last lines of ${file#"$PWD"/}" >&2
      tail -n "${1:-40}" "$file" >&2
    fi
  done
}

# Start the node: `launch JAVA ARG...` runs JAVA with jvm_options and ARG...
# detached (setsid: it outlives this script and ignores the caller's Ctrl-C;
# `stop` ends it by the pid recorded here), and sets LAUNCHED to its pid.
launch() {
  local java=$1 options
  shift
  mapfile -t options < <(jvm_options)
  : >"$RUN/logs/stdout.log"
  setsid "$java" "${options[@]}" "$@" </dev/null >>"$RUN/logs/stdout.log" 2>&1 &
  LAUNCHED=$!
  echo "$LAUNCHED" >"$PIDFILE"
  say "started pid $LAUNCHED (heap $HEAP, logs in ${RUN#"$PWD"/}/logs)"
}

# Wait until the node of pid $1 answers; stop it and fail if it exits first
# or takes longer than START_TIMEOUT_S.
wait_answering() {
  local pid=$1 started=$SECONDS
  while ! answers; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log_tail 60
      rm -f "$PIDFILE"
      say "the node exited before answering $PROTOCOL"
      exit 1
    fi
    if [ $((SECONDS - started)) -ge "$START_TIMEOUT_S" ]; then
      log_tail 60
      say "no $PROTOCOL on $HOST:$PORT after ${START_TIMEOUT_S}s; stopping pid $pid"
      stop
      exit 1
    fi
    sleep 0.5
  done
  say "answering $PROTOCOL on $HOST:$PORT after $((SECONDS - started))s"
}

# Start the node unless it answers already, and wait until it answers.
start() {
  local pid
  if answers; then
    say "already answering $PROTOCOL on $HOST:$PORT"
    return 0
  fi
  if pid=$(running_pid); then
    say "pid $pid is running but not answering yet; waiting"
  else
    boot
    pid=$LAUNCHED
  fi
  wait_answering "$pid"
}
