#!/usr/bin/env bash
# A local Apache Cassandra node on 127.0.0.1:9042 for tests and development.
#   cassandra.sh fetch    download Cassandra with Maven into .services/cassandra (once)
#   cassandra.sh start    fetch if needed, configure, start, wait until CQL answers
#   cassandra.sh stop     stop the node this script started
#   cassandra.sh status   exit 0 iff a node answers CQL on 127.0.0.1:9042
#   cassandra.sh reset    stop and delete the node's data
#   cassandra.sh log      print the tail of the node's log
# Settings (environment): METAAS_CASSANDRA_VERSION (5.0.9), METAAS_CASSANDRA_HEAP
# (1G), METAAS_CASSANDRA_START_TIMEOUT_S (180), METAAS_CASSANDRA_JAVA (a Java 11
# or 17 binary; found on the PATH or under /usr/lib/jvm by default).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${METAAS_CASSANDRA_VERSION:-5.0.9}
HEAP=${METAAS_CASSANDRA_HEAP:-1G}
START_TIMEOUT_S=${METAAS_CASSANDRA_START_TIMEOUT_S:-180}
HOST=127.0.0.1
PORT=9042

STATE="$PWD/.services/cassandra"
DIST="$STATE/dist/$VERSION"   # lib/ with every jar the node needs
RUN="$STATE/run"              # conf/, data/, logs/, cassandra.pid
PIDFILE="$RUN/cassandra.pid"
TEMPLATES="$PWD/scripts/cassandra"

NODE=cassandra
PROTOCOL=CQL
MAIN_LOG=system.log
MAIN_PATTERN=CassandraDaemon
# shellcheck source=scripts/lib/jvm-node.sh
source "$PWD/scripts/lib/jvm-node.sh"

answers() { "$(python_bin)" "$TEMPLATES/cql_probe.py" "$HOST" "$PORT" >/dev/null 2>&1; }

# Cassandra 5.0 runs on Java 11 or 17 only: METAAS_CASSANDRA_JAVA, else `java`
# on the PATH if it is one of those, else a JDK 17 or 11 under /usr/lib/jvm.
java_bin() {
  if [ -n "${METAAS_CASSANDRA_JAVA:-}" ]; then echo "$METAAS_CASSANDRA_JAVA"; return; fi
  local candidate
  for candidate in "$(command -v java || true)" /usr/lib/jvm/*-17-*/bin/java \
      /usr/lib/jvm/*17*/bin/java /usr/lib/jvm/*-11-*/bin/java; do
    [ -x "$candidate" ] || continue
    case "$(java_major "$candidate")" in 11 | 17) echo "$candidate"; return ;; esac
  done
  return 1
}

fetch() {
  if [ -f "$DIST/.complete" ]; then return 0; fi
  need mvn maven
  local work="$STATE/fetch"
  rm -rf "$work"
  mkdir -p "$work"
  say "fetching Apache Cassandra $VERSION with Maven"
  if mvn -B -q "$DEPENDENCY_PLUGIN:copy" \
      -Dartifact="org.apache.cassandra:apache-cassandra:$VERSION:tar.gz:bin" \
      -DoutputDirectory="$work" >"$work/mvn.log" 2>&1; then
    tar -xzf "$work"/apache-cassandra-*.tar.gz -C "$work"
    mkdir -p "$work/dist"
    cp -r "$work/apache-cassandra-$VERSION/lib" "$work/dist/lib"
  else
    # The binary distribution is not published to Maven Central for every
    # release: the server jar and its runtime dependencies are all there is.
    say "no binary distribution for $VERSION; using cassandra-all and its dependencies"
    maven_jars "$work" "cassandra.version=$VERSION"
  fi
  install_dist "$work"
}

configure() {
  mkdir -p "$RUN/conf" "$RUN/data" "$RUN/logs" "$RUN/triggers"
  sed "s|@STATE@|$RUN|g" "$TEMPLATES/cassandra.yaml" >"$RUN/conf/cassandra.yaml"
  cp "$TEMPLATES/logback.xml" "$RUN/conf/logback.xml"
}

jvm_options() {
  grep -v '^\s*\(#\|$\)' "$TEMPLATES/jvm.options"
  local jamm
  jamm=$(find "$DIST/lib" -maxdepth 1 -name 'jamm-*.jar' | head -n 1)
  [ -z "$jamm" ] || echo "-javaagent:$jamm"
  echo "-Xms$HEAP"
  echo "-Xmx$HEAP"
  echo "-Dcassandra.config=file://$RUN/conf/cassandra.yaml"
  echo "-Dlogback.configurationFile=$RUN/conf/logback.xml"
  echo "-Dcassandra.logdir=$RUN/logs"
  echo "-Dcassandra.storagedir=$RUN/data"
  echo "-Dcassandra.triggers_dir=$RUN/triggers"
}


boot() {
  fetch
  configure
  local java
  java=$(java_bin) || { need java openjdk-17-jre-headless; java=$(java_bin) || {
    say "Cassandra 5.0 needs Java 11 or 17 (set METAAS_CASSANDRA_JAVA)"; exit 1; }; }
  launch "$java" -cp "$RUN/conf:$DIST/lib/*" org.apache.cassandra.service.CassandraDaemon
}


status() {
  if answers; then
    local release
    release=$("$(python_bin)" "$TEMPLATES/cql_probe.py" "$HOST" "$PORT" 2>/dev/null || true)
    if pid=$(running_pid); then
      echo "cassandra $release answering on $HOST:$PORT (pid $pid)"
    else
      echo "cassandra $release answering on $HOST:$PORT (not started by this script)"
    fi
    return 0
  fi
  echo "cassandra: not answering on $HOST:$PORT"
  return 1
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  reset)
    stop
    rm -rf "$RUN"
    say "deleted ${RUN#"$PWD"/}"
    ;;
  log) log_tail 100 ;;
  *)
    echo "usage: $0 fetch|start|stop|status|reset|log" >&2
    exit 2
    ;;
esac
