#!/usr/bin/env bash
# Start-up and first-call latency against database size (loopback only).
# For each size in MILLIONS (millions of calls, 87,000 a day: 1 M ≈ 11.5
# days), a data folder is filled by `examples/year_of_records` (a CDR and
# three queue-log lines per call, ending at the last midnight UTC), then:
#   open      spawn -> first 200 to OPTIONS (database opened, crashed calls
#             closed out, flows and prompts loaded, sockets bound)
#   call      one IVR-answered call (12345's flow) through `yihaotong load`:
#             INVITE -> 200
#   rss       the server's resident memory after that call
#   report    `report` for the last whole day (87,000 CDRs), wall time
#   cdrs      `cdrs --format json` for the same day, wall time
#   stop      SIGTERM -> exit
#   kill -9   the server is killed, then started again: spawn -> first
#             200 to OPTIONS (redb first walks the file to rebuild its
#             free-space map, which a clean stop saves)
# Usage: benches/startup.sh        Env: MILLIONS="1 4 8"  KEEP=1 (keep the folders)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MILLIONS=${MILLIONS:-"1 4 8"}
WORK=${WORK:-$(mktemp -d)}
BIN=$ROOT/target/release/yihaotong
GEN=$ROOT/target/release/examples/year_of_records
PORT=5092
cargo build --release -q --bin yihaotong --example year_of_records || exit 1
now() { date +%s.%N; }
ms() { python3 -c "print(round(($2 - $1) * 1000))"; }
probe() {
  python3 - "$PORT" <<'PY'
import socket, sys, time
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0)); s.settimeout(0.02)
me = s.getsockname()[1]
deadline = time.time() + 600
while time.time() < deadline:
    msg = (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK{time.time_ns()}\r\n"
           f"From: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:127.0.0.1>\r\nCall-ID: p{time.time_ns()}\r\nCSeq: 1 OPTIONS\r\n"
           f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
    s.sendto(msg.encode(), ("127.0.0.1", port))
    try:
        if b" 200 " in s.recv(4096).split(b"\r\n")[0]:
            sys.exit(0)
    except OSError:
        pass
sys.exit(1)
PY
}
echo "| calls in the database | database | open (ms) | first call INVITE->200 (ms) | RSS after (MB) | report, one day (ms) | cdrs, one day (ms) | stop (ms) | open after kill -9 (ms) |"
echo "|---|---|---|---|---|---|---|---|---|"
for m in $MILLIONS; do
  data=$WORK/data-$m
  days=$(python3 -c "print(round($m * 1e6 / 87000))")
  [ -e "$data/db.redb" ] || "$GEN" "$data" "$days" 87000 >"$WORK/gen-$m.log" 2>&1 || { echo "generation failed"; cat "$WORK/gen-$m.log"; exit 1; }
  size=$(du -sh "$data/db.redb" | cut -f1)
  export YIHAOTONG_DATA_DIR=$data YIHAOTONG_SIP__LISTEN=127.0.0.1:$PORT YIHAOTONG_ADMIN__LISTEN="" \
         YIHAOTONG_RECORDS__KEEP_DAYS=0 RUST_LOG=warn
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null   # a cold start when allowed
  t0=$(now)
  "$BIN" run >"$WORK/server-$m.log" 2>&1 &
  pid=$!
  probe || { echo "no answer"; cat "$WORK/server-$m.log"; kill $pid; exit 1; }
  t1=$(now)
  "$BIN" load --server 127.0.0.1:$PORT --scenario ivr --calls 1 --cps 1 --talk-ms 300 --json "$WORK/call-$m.json" >/dev/null 2>&1
  first=$(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['setup_200_ms']['p50'], 1))" "$WORK/call-$m.json" 2>/dev/null || echo "?")
  rss=$(awk '/VmRSS/ {print int($2/1024)}' /proc/$pid/status)
  day=$(date -u -d "yesterday" +%F)
  r0=$(now); "$BIN" report --since "$day" --until "$(date -u +%F)" >/dev/null; r1=$(now)
  n=$("$BIN" --format json cdrs --since "$day" --until "$(date -u +%F)" | python3 -c "import json,sys; print(len(json.load(sys.stdin)))"); c1=$(now)
  s0=$(now); kill -TERM $pid; wait $pid; s1=$(now)
  "$BIN" run >>"$WORK/server-$m.log" 2>&1 &
  pid=$!
  probe && kill -KILL $pid; wait $pid 2>/dev/null
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null
  k0=$(now)
  "$BIN" run >>"$WORK/server-$m.log" 2>&1 &
  pid=$!
  probe || { echo "no answer after kill -9"; tail "$WORK/server-$m.log"; kill $pid; exit 1; }
  k1=$(now)
  kill -TERM $pid; wait $pid
  echo "| $(python3 -c "print(f'{round($days * 87000):,}')") | $size | $(ms $t0 $t1) | $first | $rss | $(ms $r0 $r1) | $(ms $r1 $c1) ($n CDRs) | $(ms $s0 $s1) | $(ms $k0 $k1) |"
  [ -n "${KEEP:-}" ] || rm -rf "$data"
done
