# deploy/local/lib/bench.sh — shell functions the benchmark scripts share (sourced, not run).
#
# Expects: $bin (the fleetledger binary), $work (a scratch directory), $api_port,
# FLEETLEDGER_URL and FLEETLEDGER_BENCH_RESULTS in the environment.

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

json_string() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g'; }
# A note on the run (commit, machine, scale) in the results.
meta() { printf '{"meta":"%s","value":"%s"}\n' "$1" "$(json_string "$2")" >> "$FLEETLEDGER_BENCH_RESULTS"; }
# One measurement: figure NAME VALUE UNIT.
figure() {
  printf '{"name":"%s","value":%s,"unit":"%s"}\n' "$1" "$2" "$3" >> "$FLEETLEDGER_BENCH_RESULTS"
  echo "$1: $2 $3"
}
# What the figures named NAME (or NAME.*) measure.
label() { printf '{"name":"%s","label":"%s"}\n' "$1" "$(json_string "$2")" >> "$FLEETLEDGER_BENCH_RESULTS"; }

# Starts `fleetledger serve` and waits for /readyz; sets serve_pid and ready_secs.
serve_pid=""
start_serve() {
  local started=$SECONDS t0
  t0="$(date +%s.%N)"
  "$bin" serve --listen "127.0.0.1:$api_port" >>"$work/serve.log" 2>&1 </dev/null &
  serve_pid=$!
  until curl -fsS "$FLEETLEDGER_URL/readyz" >/dev/null 2>&1; do
    kill -0 "$serve_pid" 2>/dev/null || { tail -20 "$work/serve.log" >&2; die "serve exited during start"; }
    [ $((SECONDS - started)) -lt 300 ] || die "serve not ready after 300 s"
    sleep 0.05
  done
  ready_secs="$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.3f", b - a}')"
}
# The running serve's peak RSS (VmHWM) in MiB, empty if none runs.
serve_peak_rss() {
  [ -n "$serve_pid" ] || return 0
  awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$serve_pid/status" 2>/dev/null || true
}
# Stops serve (SIGTERM) and waits for it.
stop_serve() {
  [ -n "$serve_pid" ] || return 0
  kill "$serve_pid" 2>/dev/null || true
  wait "$serve_pid" 2>/dev/null || true
  serve_pid=""
}

# The answer of the running serve to SQL query $1 (JSON).
sql() {
  curl -fsS -H "authorization: Bearer dev-sync" -H 'content-type: application/json' \
    --data "$(printf '{"sql": "%s"}' "$1")" "$FLEETLEDGER_URL/v1/sql"
}
# The first value of column $2 in the answer to query $1.
sql_value() { sql "$1" | sed -n "s/.*\"$2\":\"\{0,1\}\([^\",}]*\).*/\1/p"; }
# Waits until the projections have applied everything written: the audit log's row count
# stops changing (nothing else writes meanwhile).
projections_settle() {
  local before=-1 now
  now="$(sql_value 'SELECT count(*) AS n FROM audit_log' n)"
  until [ "$now" = "$before" ]; do
    sleep 2
    before="$now"
    now="$(sql_value 'SELECT count(*) AS n FROM audit_log' n)"
  done
}
