# deploy/local/lib/suite_broker.sh — the broker of a test suite (sourced by deploy/local/test
# and deploy/local/faults, not run): one node on FLEETLEDGER_TEST_KAFKA_PORT (default 19092,
# its controller on the next port), started on empty storage and stopped when the script
# exits. The broker of `deploy/local/up` and its data are left alone, and topics of earlier
# runs never pile up: a broker holding thousands of partitions takes minutes to start.
#
# Expects $root (the repository). Exports FLEETLEDGER_TEST_BOOTSTRAP and
# FLEETLEDGER_TEST_KAFKA_DATA for the tests.

suite_port="${FLEETLEDGER_TEST_KAFKA_PORT:-19092}"

# Runs `deploy/local/kafka ARGS` for the suite's broker.
suite_kafka() {
  FLEETLEDGER_KAFKA_PORT="$suite_port" FLEETLEDGER_KAFKA_NODES=1 "$root/deploy/local/kafka" "$@"
}

# Starts the suite's broker on empty storage (the caller stops it on exit with
# `suite_kafka stop`).
start_suite_broker() {
  suite_kafka fresh
  export FLEETLEDGER_TEST_BOOTSTRAP="127.0.0.1:$suite_port"
  # The compaction test reads the broker's log-cleaner checkpoint from its data directory.
  FLEETLEDGER_TEST_KAFKA_DATA="$(suite_kafka data-dir)"
  export FLEETLEDGER_TEST_KAFKA_DATA
}
