#!/usr/bin/env bash
# Runs the public SIP robustness suites from ../shared/conformance against the
# release binary, each inside a loopback-only network namespace
# (netns-run.sh), over UDP and TCP:
#   - RFC 4475 + RFC 5118 torture messages (61): every message must leave the
#     server alive and get an allowed answer; MIN_TORTURE sets the bar. The
#     answer must also be the one the RFC prefers (the `ideal` column) for all
#     37 messages that name one over UDP, and for 35 over TCP: there clerr
#     (Content-Length past the data) can only be waited on, and inv2543 (no
#     Content-Length) cannot be framed, as RFC 4475 §3.1.2.2 and RFC 3261
#     §18.3 say; both get silence or a 400 and a closed connection.
#   - PROTOS c07-sip (4,527 malformed INVITEs): the server must survive all.
# Usage: tests/conformance.sh [torture|protos|all]   (default all)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHARED=${SHARED:-$ROOT/../shared}
CONF=$SHARED/conformance
BIN=$ROOT/target/release/yihaotong
WHAT=${1:-all}
MIN_TORTURE=${MIN_TORTURE:-61}
MIN_IDEAL_UDP=${MIN_IDEAL_UDP:-37}
MIN_IDEAL_TCP=${MIN_IDEAL_TCP:-35}
PORT=5070
fail=0

if [ ! -d "$CONF" ]; then
  echo "conformance: $CONF not found" >&2
  exit 1
fi
[ -x "$BIN" ] || cargo build --release

server_cmd() {
  local dir
  dir=$(mktemp -d)
  # The trunk ACL is empty here: torture INVITEs must not start calls that ring
  # nobody; they are authenticated like any stranger's.
  echo "YIHAOTONG_SIP__LISTEN=127.0.0.1:$PORT YIHAOTONG_DATA_DIR=$dir/data YIHAOTONG_TRUNK__ALLOW=127.0.0.9/32 RUST_LOG=error $BIN run"
}

run_suite() { # name transport runner
  local name=$1 proto=$2 runner=$3 out
  out=$(mktemp)
  TORTURE_RUNNER=$runner STARTUP_WAIT=2 "$CONF/torture/netns-run.sh" "$(server_cmd)" 127.0.0.1 $PORT "$proto" >"$out" 2>&1
  local summary
  summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$out" | tail -1)
  echo "$name/$proto: ${summary:-no summary}"
  grep -E 'FAIL|dead' "$out" | head -20
  local passed=${summary%% passed*}
  local failed=${summary#*, }; failed=${failed%% failed*}
  if [ -z "$summary" ]; then
    tail -20 "$out"; fail=1; return
  fi
  if [ "$name" = torture ]; then
    [ "$passed" -lt "$MIN_TORTURE" ] && fail=1
    local ideal min_ideal
    ideal=$(sed -nE 's/^RFC-preferred \(ideal\) outcome for ([0-9]+) of.*/\1/p' "$out" | tail -1)
    if [ "$proto" = udp ]; then min_ideal=$MIN_IDEAL_UDP; else min_ideal=$MIN_IDEAL_TCP; fi
    echo "$name/$proto: RFC-preferred answer for ${ideal:-?} (at least $min_ideal required)"
    grep -F '(not ideal)' "$out" | head -20
    if [ -z "$ideal" ] || [ "$ideal" -lt "$min_ideal" ]; then fail=1; fi
  fi
  if [ "$name" = protos ] && [ "$failed" -ne 0 ]; then fail=1; fi
}

if [ "$WHAT" = torture ] || [ "$WHAT" = all ]; then
  run_suite torture udp "$CONF/torture/run.sh"
  run_suite torture tcp "$CONF/torture/run.sh"
fi
if [ "$WHAT" = protos ] || [ "$WHAT" = all ]; then
  run_suite protos udp "$CONF/protos/protos_run.sh"
  run_suite protos tcp "$CONF/protos/protos_run.sh"
fi
exit $fail
