#!/usr/bin/env bash
# A local Apache Kafka node (KRaft: broker and controller in one process, no
# ZooKeeper) on 127.0.0.1:9092 for tests and development.
#   kafka.sh fetch          download Kafka with Maven into .services/kafka (once)
#   kafka.sh start | up     fetch if needed, configure, format the storage once,
#                           start, wait until the broker answers a metadata request
#   kafka.sh stop | down    stop the node this script started
#   kafka.sh status         exit 0 iff a broker answers on 127.0.0.1:9092
#   kafka.sh reset          stop and delete the node's data (the next start formats anew)
#   kafka.sh log            print the tail of the node's log
#   kafka.sh topics ARG...  kafka-topics against the node, e.g. `topics --list`
# Settings (environment): METAAS_KAFKA_VERSION (4.1.1), METAAS_KAFKA_HEAP
# (512m), METAAS_KAFKA_START_TIMEOUT_S (120), METAAS_KAFKA_JAVA (a Java 17 or
# newer binary; found on the PATH or under /usr/lib/jvm by default).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${METAAS_KAFKA_VERSION:-4.1.1}
HEAP=${METAAS_KAFKA_HEAP:-512m}
START_TIMEOUT_S=${METAAS_KAFKA_START_TIMEOUT_S:-120}
HOST=127.0.0.1
PORT=9092

STATE="$PWD/.services/kafka"
DIST="$STATE/dist/$VERSION"   # lib/ with every jar the node and its tools need
RUN="$STATE/run"              # conf/, data/, logs/, kafka.pid
PIDFILE="$RUN/kafka.pid"
TEMPLATES="$PWD/scripts/kafka"

NODE=kafka
PROTOCOL=Kafka
MAIN_LOG=server.log
MAIN_PATTERN=' kafka\.Kafka '
# shellcheck source=scripts/lib/jvm-node.sh
source "$PWD/scripts/lib/jvm-node.sh"

answers() { "$(python_bin)" "$TEMPLATES/kafka_probe.py" "$HOST" "$PORT" >/dev/null 2>&1; }

# Kafka 4 brokers need Java 17 or newer: METAAS_KAFKA_JAVA, else `java` on the
# PATH if it is new enough, else a JDK 17 or newer under /usr/lib/jvm.
java_bin() {
  if [ -n "${METAAS_KAFKA_JAVA:-}" ]; then echo "$METAAS_KAFKA_JAVA"; return; fi
  local candidate major
  for candidate in "$(command -v java || true)" /usr/lib/jvm/*/bin/java; do
    [ -x "$candidate" ] || continue
    major=$(java_major "$candidate")
    if [ -n "$major" ] && [ "$major" -ge 17 ]; then echo "$candidate"; return; fi
  done
  return 1
}

java_or_exit() {
  local java
  java=$(java_bin) || { need java openjdk-17-jre-headless; java=$(java_bin) || {
    say "Kafka $VERSION needs Java 17 or newer (set METAAS_KAFKA_JAVA)"; exit 1; }; }
  echo "$java"
}

fetch() {
  if [ -f "$DIST/.complete" ]; then return 0; fi
  need mvn maven
  local work="$STATE/fetch"
  rm -rf "$work"
  mkdir -p "$work"
  say "fetching Apache Kafka $VERSION (kafka_2.13, kafka-tools) with Maven"
  maven_jars "$work" "kafka.version=$VERSION"
  install_dist "$work"
}

configure() {
  mkdir -p "$RUN/conf" "$RUN/data" "$RUN/logs"
  sed "s|@STATE@|$RUN|g" "$TEMPLATES/server.properties" >"$RUN/conf/server.properties"
  cp "$TEMPLATES/log4j2.properties" "$RUN/conf/log4j2.properties"
}

# Tools (StorageTool, TopicCommand) run in a small JVM of their own.
tool() {
  local java
  java=$(java_or_exit)
  "$java" -Xmx256m -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$RUN/conf/log4j2.properties" -Dkafka.logs.dir="$RUN/logs" \
    -Dkafka.log.name=tools -cp "$DIST/lib/*" "$@"
}

# A KRaft node needs its storage formatted, once, with the cluster's id; the
# data directory then holds meta.properties and later starts reuse it.
format_once() {
  [ -f "$RUN/data/meta.properties" ] && return 0
  local cluster_id
  cluster_id=$(tool kafka.tools.StorageTool random-uuid)
  say "formatting ${RUN#"$PWD"/}/data for cluster $cluster_id"
  if ! tool kafka.tools.StorageTool format --cluster-id "$cluster_id" \
      --config "$RUN/conf/server.properties" >"$RUN/logs/format.log" 2>&1; then
    cat "$RUN/logs/format.log" >&2
    say "could not format the storage"
    exit 1
  fi
}

jvm_options() {
  grep -v '^\s*\(#\|$\)' "$TEMPLATES/jvm.options"
  echo "-Xms$HEAP"
  echo "-Xmx$HEAP"
  echo "-Dlog4j2.configurationFile=$RUN/conf/log4j2.properties"
  echo "-Dkafka.logs.dir=$RUN/logs"
}


boot() {
  fetch
  configure
  format_once
  local java
  java=$(java_or_exit)
  launch "$java" -cp "$DIST/lib/*" kafka.Kafka "$RUN/conf/server.properties"
}


status() {
  local description pid
  if description=$("$(python_bin)" "$TEMPLATES/kafka_probe.py" "$HOST" "$PORT" 2>/dev/null); then
    if pid=$(running_pid); then
      echo "kafka answering on $HOST:$PORT, $description (pid $pid)"
    else
      echo "kafka answering on $HOST:$PORT, $description (not started by this script)"
    fi
    return 0
  fi
  echo "kafka: not answering on $HOST:$PORT"
  return 1
}

case "${1:-}" in
  fetch) fetch ;;
  start | up) start ;;
  stop | down) stop ;;
  status) status ;;
  reset)
    stop
    rm -rf "$RUN"
    say "deleted ${RUN#"$PWD"/}"
    ;;
  log) log_tail 100 ;;
  topics)
    shift
    fetch
    configure
    tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$HOST:$PORT" "$@"
    ;;
  *)
    echo "usage: $0 fetch|start|up|stop|down|status|reset|log|topics [arg...]" >&2
    exit 2
    ;;
esac
