#!/usr/bin/env bash
# `make test`'s three processes, side by side on their own inputs:
#   1. the tests that freeze, stop or renew their broker (-m broker_faults), on a broker of their own at
#      PMON_KAFKA_PORT + 1, which the session starts and stops (tests/conftest.py), and on it the fault harness's
#      runs (-m fault_harness: five minutes of workers, which would otherwise make process 2 the longest);
#   2. the other tests of the broker (-m "kafka and not broker_faults and not fault_harness"), on the broker
#      `make kafka-up` started;
#   3. every other test (-m "not kafka").
# Each writes its own log; they are printed in that order once all are done. Exit 0 only if all three pass.
set -uo pipefail

PYTHON=${PYTHON:-.venv/bin/python}
PORT=${PMON_KAFKA_PORT:-9092}
FAULTS_PORT=$((PORT + 1))
LOGS=${PMON_TEST_LOGS:-.venv/test-logs}
mkdir -p "$LOGS"

PMON_KAFKA_PORT=$FAULTS_PORT PMON_KAFKA_BOOTSTRAP=127.0.0.1:$FAULTS_PORT \
  "$PYTHON" -m pytest -m "broker_faults or fault_harness" -p no:cacheprovider >"$LOGS/broker-faults.log" 2>&1 &
faults=$!
PMON_KAFKA_BOOTSTRAP=127.0.0.1:$PORT "$PYTHON" -m pytest -m "not kafka" -p no:cacheprovider \
  >"$LOGS/not-kafka.log" 2>&1 &
others=$!
echo "run-tests: broker faults on :$FAULTS_PORT (pid $faults) and the tests without a broker (pid $others) run" \
  "beside these; their logs follow at the end ($LOGS)"
PMON_KAFKA_BOOTSTRAP=127.0.0.1:$PORT "$PYTHON" -m pytest -m "kafka and not broker_faults and not fault_harness"
broker=$?
wait "$faults"; faults_status=$?
wait "$others"; others_status=$?
for name in broker-faults not-kafka; do
  echo "== $name ($LOGS/$name.log)"
  cat "$LOGS/$name.log"
done
echo "run-tests: tests of the broker exit $broker; broker faults exit $faults_status; the others exit $others_status"
((broker == 0 && faults_status == 0 && others_status == 0))
