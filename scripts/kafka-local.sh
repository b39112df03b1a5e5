#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, broker+controller in one JVM) for tests and
# `make kafka-up` / `make kafka-down`. Jars come from Maven Central via kafka/pom.xml, so
# neither Docker nor a Kafka tarball download is needed; only java, mvn and python3.
#
#   scripts/kafka-local.sh up|down|status|stop|start
#
# `up` starts a fresh, empty broker; `down` stops it and deletes its run dir. `stop` and
# `start` stop and start it again keeping its data (for tests of a broker outage).
#
# Env: PMON_KAFKA_PORT (9092), PMON_KAFKA_VERSION (4.4.0), PMON_KAFKA_HEAP (512m),
#      PMON_KAFKA_CACHE (jars, outside the repo), PMON_KAFKA_RUN_DIR (config, data, logs, pid),
#      PMON_KAFKA_START_TIMEOUT (60 s).
# Opt-in, for tests of SASL_SSL (tests/test_security.py): PMON_KAFKA_SASL_SSL_PORT adds a listener
#      SASL_SSL://127.0.0.1:<port> (SCRAM-SHA-512) besides PLAINTEXT, with the PKCS12 keystore
#      PMON_KAFKA_SSL_KEYSTORE (password PMON_KAFKA_SSL_KEYSTORE_PASSWORD) and one SCRAM user,
#      PMON_KAFKA_SCRAM_USER / PMON_KAFKA_SCRAM_PASSWORD, created at format time.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PORT=${PMON_KAFKA_PORT:-9092}
VERSION=${PMON_KAFKA_VERSION:-4.4.0}
CACHE=${PMON_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/personalization-monitor/kafka-$VERSION}
RUN_DIR=${PMON_KAFKA_RUN_DIR:-${TMPDIR:-/tmp}/pmon-kafka-$PORT}
HEAP=${PMON_KAFKA_HEAP:-512m}
PID_FILE=$RUN_DIR/kafka.pid
START_TIMEOUT=${PMON_KAFKA_START_TIMEOUT:-60}
STOP_TIMEOUT=30
SASL_SSL_PORT=${PMON_KAFKA_SASL_SSL_PORT:-}

log() { echo "kafka-local: $*" >&2; }
die() { log "error: $*"; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH ($2)"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Pid of our broker if the pid file names a live kafka.Kafka process using this run dir
# (guards against a stale pid file whose pid was reused by something else).
broker_pid() {
  local pid
  pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
  [[ -n $pid ]] && ps -p "$pid" -o args= 2>/dev/null | grep -q "kafka.Kafka $RUN_DIR/" && echo "$pid"
}

# A real Metadata request (v4, plain stdlib sockets): ready only once the broker serves
# requests and lists itself; an open port alone is not enough (it binds before it serves).
broker_ready() {
  python3 - "$PORT" <<'PY' 2>/dev/null
import socket, struct, sys
port = int(sys.argv[1])
client = b"kafka-local"
# header: api_key=3 (Metadata), version=4, correlation_id=1, client_id; body: topics=[] , auto_create=false
req = struct.pack(">hhih", 3, 4, 1, len(client)) + client + struct.pack(">ib", 0, 0)
with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
    s.sendall(struct.pack(">i", len(req)) + req)
    buf = b""
    while len(buf) < 16:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit(1)
        buf += chunk
# size, correlation_id, throttle_time_ms, broker count
_, corr, _, nbrokers = struct.unpack(">iiii", buf[:16])
sys.exit(0 if corr == 1 and nbrokers >= 1 else 1)
PY
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

fetch_jars() {
  # The marker is written last (so an interrupted fetch is redone) and holds the pom's
  # checksum (so editing kafka/pom.xml refetches).
  local sum
  sum=$(cksum <"$REPO_ROOT/kafka/pom.xml")
  [[ $(cat "$CACHE/.complete" 2>/dev/null) == "$sum" ]] && return 0
  need mvn "install Maven to fetch the Kafka jars"
  log "fetching Kafka $VERSION jars into $CACHE (one-time)"
  rm -rf "$CACHE/libs"
  mkdir -p "$CACHE"
  if ! mvn -q -B -f "$REPO_ROOT/kafka/pom.xml" -Dkafka.version="$VERSION" \
      dependency:copy-dependencies -DoutputDirectory="$CACHE/libs" >"$CACHE/fetch.log" 2>&1; then
    tail -n 30 "$CACHE/fetch.log" >&2
    die "maven could not fetch org.apache.kafka:kafka_2.13:$VERSION (log: $CACHE/fetch.log)"
  fi
  echo "$sum" >"$CACHE/.complete"
}

write_config() {
  local cport=$1
  cat >"$RUN_DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
# 4.x dynamic quorum: bootstrap servers + 'format --standalone' instead of quorum.voters.
controller.quorum.bootstrap.servers=127.0.0.1:$cport
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$cport${SASL_SSL_PORT:+,SASL_SSL://127.0.0.1:$SASL_SSL_PORT}
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT${SASL_SSL_PORT:+,SASL_SSL://127.0.0.1:$SASL_SSL_PORT}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT${SASL_SSL_PORT:+,SASL_SSL:SASL_SSL}
inter.broker.listener.name=PLAINTEXT
log.dirs=$RUN_DIR/data
# Single node: every internal topic must live with one replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests want fast consumer-group joins and topics on first use.
group.initial.rebalance.delay.ms=0
num.partitions=1
auto.create.topics.enable=true
log.segment.bytes=16777216
log.retention.check.interval.ms=60000
EOF
  [[ -z $SASL_SSL_PORT ]] && return 0
  cat >>"$RUN_DIR/server.properties" <<EOF
# Opt-in SASL_SSL listener (PMON_KAFKA_SASL_SSL_PORT); its SCRAM users live in the cluster metadata.
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$PMON_KAFKA_SSL_KEYSTORE
listener.name.sasl_ssl.ssl.keystore.password=$PMON_KAFKA_SSL_KEYSTORE_PASSWORD
EOF
}

# The opt-in SASL_SSL mode's format option, its SCRAM user (nothing without the mode); dies when a setting is missing.
scram_credential() {
  [[ -z $SASL_SSL_PORT ]] && return 0
  local v
  for v in PMON_KAFKA_SSL_KEYSTORE PMON_KAFKA_SSL_KEYSTORE_PASSWORD PMON_KAFKA_SCRAM_USER PMON_KAFKA_SCRAM_PASSWORD; do
    [[ -n ${!v:-} ]] || die "PMON_KAFKA_SASL_SSL_PORT is set, so $v must be too"
  done
  [[ -r $PMON_KAFKA_SSL_KEYSTORE ]] || die "keystore $PMON_KAFKA_SSL_KEYSTORE is not readable"
  echo "SCRAM-SHA-512=[name=$PMON_KAFKA_SCRAM_USER,password=$PMON_KAFKA_SCRAM_PASSWORD]"
}

cmd_up() {
  need java "install a JDK (17+) to run the broker"
  need python3 "needed for the readiness check"
  fetch_jars

  local pid
  if pid=$(broker_pid); then
    # Ours is running (or still starting, e.g. a concurrent 'up'): never start a second one.
    wait_ready "$pid"
    log "already running on 127.0.0.1:$PORT (pid $pid)"
    return 0
  fi
  port_open "$PORT" && die "port $PORT is in use by another process; stop it or set PMON_KAFKA_PORT"
  local scram
  scram=$(scram_credential) || exit 1

  # Fresh state every start: stale logs/metadata from an old run only cause surprises in tests.
  rm -rf "$RUN_DIR"
  mkdir -p "$RUN_DIR/data"
  write_config "$(free_port)"

  local cp="$CACHE/libs/*" cluster_id
  # Same format as 'StorageTool random-uuid' (base64url of 16 random bytes, never starting
  # with '-'), without paying for another JVM start.
  cluster_id=$(python3 -c 'import base64, os
while (u := base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")).startswith("-"): pass
print(u)')
  java -cp "$cp" -Dlog4j2.configurationFile="$REPO_ROOT/kafka/log4j2.yaml" -Dkafka.logs.dir="$RUN_DIR" \
    kafka.tools.StorageTool format --standalone -t "$cluster_id" -c "$RUN_DIR/server.properties" \
    ${scram:+--add-scram "$scram"} \
    >"$RUN_DIR/format.log" 2>&1 || { cat "$RUN_DIR/format.log" >&2; die "storage format failed"; }

  launch
}

# Start the JVM on the run dir as it is (formatted, perhaps with data) and wait until it serves.
launch() {
  local cp="$CACHE/libs/*"
  log "starting Kafka $VERSION on 127.0.0.1:$PORT (run dir $RUN_DIR)"
  nohup java -Xmx"$HEAP" -Xms"$HEAP" -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$REPO_ROOT/kafka/log4j2.yaml" -Dkafka.logs.dir="$RUN_DIR" \
    -cp "$cp" kafka.Kafka "$RUN_DIR/server.properties" >>"$RUN_DIR/console.log" 2>&1 </dev/null &
  echo $! >"$PID_FILE"
  wait_ready $!
  log "ready on 127.0.0.1:$PORT (pid $(cat "$PID_FILE"))"
}

# The broker of an earlier `up` again, with its data (topics, offsets, transactions).
cmd_start() {
  local pid
  if pid=$(broker_pid); then
    wait_ready "$pid"
    log "already running on 127.0.0.1:$PORT (pid $pid)"
    return 0
  fi
  [[ -f $RUN_DIR/server.properties && -d $RUN_DIR/data ]] || die "no broker to start in $RUN_DIR; use '$0 up'"
  port_open "$PORT" && die "port $PORT is in use by another process; stop it or set PMON_KAFKA_PORT"
  fetch_jars
  launch
}

wait_ready() {
  local pid=$1 deadline=$((SECONDS + START_TIMEOUT))
  until broker_ready; do
    if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
      if kill -0 "$pid" 2>/dev/null; then
        log "not ready after ${START_TIMEOUT}s, killing pid $pid"
        kill -KILL "$pid" 2>/dev/null || true  # a hung broker must not keep holding the port
      else
        log "broker process exited"
      fi
      for f in server.log console.log; do
        [[ -s $RUN_DIR/$f ]] && { log "last lines of $RUN_DIR/$f:"; tail -n 25 "$RUN_DIR/$f" >&2; }
      done
      die "Kafka did not start (leaving $RUN_DIR for inspection; '$0 down' cleans up)"
    fi
    sleep 0.5
  done
}

cmd_down() {
  cmd_stop
  rm -rf "$RUN_DIR"
}

# Stop the broker, keeping its run dir for `start`.
cmd_stop() {
  local pid
  if pid=$(broker_pid); then
    log "stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      log "still alive after ${STOP_TIMEOUT}s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    fi
    log "stopped"
  else
    log "not running"
  fi
}

cmd_status() {
  local pid
  if pid=$(broker_pid) && broker_ready; then
    echo "running on 127.0.0.1:$PORT (pid $pid, Kafka $VERSION, run dir $RUN_DIR)"
  else
    echo "not running"
    return 1
  fi
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  stop) cmd_stop ;;
  start) cmd_start ;;
  *) echo "usage: $0 up|down|status|stop|start" >&2; exit 2 ;;
esac
