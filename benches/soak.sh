#!/usr/bin/env bash
# A long run on one machine (loopback only): rounds of IVR-answered calls
# (12345's flow, IVR_CPS) and bridged calls (trunk -> queue -> agent -> talk,
# QUEUE_CPS) alternate on one fresh server until CALLS calls were placed,
# with a pause between rounds. Every 10 s a sample: calls so far, resident
# memory, database and archive size, the server's CPU seconds. Printed at the
# end: the samples, disk per call and per day at 87,000 calls a day, CPU per
# call, and the slope of RSS after the first two rounds (warm-up) in KB per
# 10,000 calls (the goal is zero).
# Usage: benches/soak.sh    Env: CALLS=1000000 ROUND=15000 IVR_CPS=500 QUEUE_CPS=200
#                                 AGENTS=600 PAUSE=20 CACHE_MB=64
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CALLS=${CALLS:-1000000}
ROUND=${ROUND:-15000}
IVR_CPS=${IVR_CPS:-500}
QUEUE_CPS=${QUEUE_CPS:-200}
AGENTS=${AGENTS:-600}
PAUSE=${PAUSE:-20}
WORK=$(mktemp -d)
BIN=$ROOT/target/release/yihaotong
PORT=5092
cargo build --release -q --bin yihaotong || exit 1
export YIHAOTONG_DATA_DIR=$WORK/data YIHAOTONG_SIP__LISTEN=127.0.0.1:$PORT YIHAOTONG_ADMIN__LISTEN="" \
       YIHAOTONG_STORE__CACHE_MB=${CACHE_MB:-64} YIHAOTONG_RECORDING__ENABLED=false RUST_LOG=warn
"$BIN" run >"$WORK/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$WORK"' EXIT
sleep 2
TICK=$(getconf CLK_TCK)
placed=0
echo 0 >"$WORK/placed"
sample() {
  while kill -0 $PID 2>/dev/null; do
    local rss db arch cpu
    rss=$(awk '/VmRSS/ {print $2}' /proc/$PID/status)
    db=$(du -sk "$WORK/data/db.redb" 2>/dev/null | cut -f1)
    arch=$(du -sk "$WORK/data/archive" 2>/dev/null | cut -f1)
    cpu=$(awk -v t="$TICK" '{printf "%.1f", ($14 + $15) / t}' /proc/$PID/stat)
    echo "$(date +%s) $(cat "$WORK/placed") $rss ${db:-0} ${arch:-0} $cpu" >>"$WORK/samples"
    sleep 10
  done
}
sample &
SAMPLER=$!
round=0
while [ "$placed" -lt "$CALLS" ]; do
  if [ $((round % 2)) -eq 0 ]; then
    "$BIN" load --server 127.0.0.1:$PORT --scenario ivr --calls "$ROUND" --cps "$IVR_CPS" \
      --talk-ms 3000 --max-seconds 600 --json "$WORK/round-$round.json" >>"$WORK/load.log" 2>&1
  else
    "$BIN" load --server 127.0.0.1:$PORT --scenario queue --calls "$ROUND" --cps "$QUEUE_CPS" \
      --provision --reuse-accounts --agents "$AGENTS" --talk-ms 2000 --max-seconds 600 \
      --json "$WORK/round-$round.json" >>"$WORK/load.log" 2>&1
  fi
  placed=$((placed + ROUND)); round=$((round + 1))
  echo "$placed" >"$WORK/placed"
  echo "round $round: $placed calls placed" >&2
  sleep "$PAUSE"
done
sleep 12
kill $SAMPLER 2>/dev/null
python3 - "$WORK/samples" "$ROUND" "$WORK" <<'PY'
import glob, json, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
round_calls = int(sys.argv[2])
completed = failed = 0
for f in glob.glob(sys.argv[3] + "/round-*.json"):
    try:
        r = json.load(open(f))
        completed += r.get("completed", 0); failed += r.get("attempted", 0) - r.get("completed", 0)
    except Exception:
        pass
print("| t (s) | calls placed | RSS (MB) | database (MB) | archive (MB) | CPU (s) |\n|---|---|---|---|---|---|")
t0 = rows[0][0]
for t, calls, rss, db, arch, cpu in rows[::6]:
    print(f"| {t - t0:.0f} | {calls:.0f} | {rss / 1024:.0f} | {db / 1024:.0f} | {arch / 1024:.1f} | {cpu:.0f} |")
last = rows[-1]
calls = last[1]
print(f"\ncalls completed {completed}, failed {failed}")
if calls:
    per_call = last[3] * 1024 / calls
    print(f"database: {per_call:.0f} bytes per call = {per_call * 87000 / 2**20:.0f} MB per day at 87,000 calls a day")
    print(f"CPU: {last[5] / calls * 1000:.2f} ms per call (signalling, IVR media and records)")
warm = [r for r in rows if r[1] >= 2 * round_calls]
if len(warm) >= 2:
    n = len(warm); xs = [r[1] for r in warm]; ys = [r[2] for r in warm]
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0
    print(f"RSS after warm-up: {min(ys) / 1024:.0f} to {max(ys) / 1024:.0f} MB, slope {slope * 10000:.0f} KB per 10,000 calls")
PY
