#!/usr/bin/env bash
# Signalling capacity, side by side, in one run on this machine (loopback only):
#   ceiling    SIPp UAC -> SIPp UAS directly: what the load generator can do
#   kamailio   SIPp UAC -> Kamailio 5.6 stateful proxy (tm, record-route) -> SIPp UAS
#   yihaotong  SIPp UAC (trunk) -> yihaotong (route 123450 -> queue -> agent,
#              both legs answered, media anchored) -> SIPp UAS (the agents)
#   ivr        SIPp UAC (trunk) -> yihaotong answering 12345 with its flow (an
#              RTP port, a media-engine stream, the greeting started); then a
#              step at IVR_P99_CPS (1000) with SIPp's per-call response times
#              (-trace_rtt) for the INVITE -> 200 percentiles
# Each target is driven at rising calls per second (CPS_STEPS) for STEP_SECONDS
# each; a step passes while failed calls stay at or under 0.1%. Then the
# harness's own measurements: `yihaotong load` register storm, and queue calls
# with RTP both ways; and (concurrency) the most prompt streams and bridged
# calls held at once within loss and jitter bounds. Prints a table;
# BENCHMARKS.md records it.
#
# Usage: benches/run.sh            (installs sip-tester and kamailio if missing)
# Env:   CPS_STEPS="200 400 800 1200 1600 2000"  STEP_SECONDS=10  AGENTS=400  YHT_BIN (see BIN)
#        TARGETS="sipp kamailio yihaotong ivr harness concurrency" (a subset measures less; ratios need all)
#        CONC_STREAM_STEPS="500 1000 1500 2000 2500 3000"  CONC_BRIDGED_STEPS="250 500 750 1000 1250 1500"
#        add "surge" (SURGE_CPS, SURGE_SECONDS) for the overload run, see below,
#        or "soak" (benches/soak.sh and its env: CALLS, ROUND…); TARGETS=soak runs only it
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CPS_STEPS=${CPS_STEPS:-"200 400 800 1200 1600 2000 2500"}
STEP_SECONDS=${STEP_SECONDS:-10}
AGENTS=${AGENTS:-400}
TARGETS=" ${TARGETS:-sipp kamailio yihaotong ivr harness concurrency} "
IVR_P99_CPS=${IVR_P99_CPS:-1000}
want() { [[ "$TARGETS" == *" $1 "* ]]; }
# Soak (TARGETS includes "soak"): benches/soak.sh first, a long run on one
# server (CALLS=1000000 by default: hours) for memory and disk per day.
if want soak; then
  benches/soak.sh || exit 1
  [ "$(echo $TARGETS)" = soak ] && exit 0
fi
CEILING=0 KAMAILIO=0 YIHAOTONG=0 IVR=0
WORK=$(mktemp -d)
# YHT_BIN: a yihaotong binary to measure instead of building this tree's
# (two builds side by side: YHT_BIN=/tmp/before/yihaotong, then the tree's).
BIN=${YHT_BIN:-$ROOT/target/release/yihaotong}
UAS_PORT=5091 KAM_PORT=5090 YHT_PORT=5092 UAC_PORT=5093

need() { command -v "$1" >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need sipp sip-tester
need kamailio kamailio
[ -n "${YHT_BIN:-}" ] || cargo build --release -q
cleanup() { pkill -f "sipp.*-p $UAS_PORT" 2>/dev/null; pkill -f "kamailio -f $WORK" 2>/dev/null; [ -n "${YHT_PID:-}" ] && kill "$YHT_PID" 2>/dev/null && wait "$YHT_PID" 2>/dev/null; true; }
trap cleanup EXIT

# One SIPp UAS answering everything (the agents, or the proxied callee), with
# 200 at once and no 180 (benches/sipp/uas_answer.xml says why; UAS_SF picks
# another scenario, `-sf`).
UAS_SF=${UAS_SF:-$ROOT/benches/sipp/uas_answer.xml}
start_uas() {
  pkill -f "sipp.*-p $UAS_PORT" 2>/dev/null; sleep 0.3
  sipp -sf "$UAS_SF" -i 127.0.0.1 -p $UAS_PORT -bg -nostdin >/dev/null 2>&1
  sleep 0.5
}

# run_step TARGET_PORT CPS [extra sipp args] -> prints "attempted failed"
run_step() {
  local port=$1 cps=$2; shift 2
  local calls=$((cps * STEP_SECONDS)) dir="$WORK/step-${STEP_NAME:-$port}-$cps"
  mkdir -p "$dir"
  (cd "$dir" && timeout $((STEP_SECONDS * 3 + 40)) sipp -sn uac -i 127.0.0.1 -p $UAC_PORT "127.0.0.1:$port" \
      -r "$cps" -m "$calls" -l $((cps * 4)) -d 0 -nostdin -timeout $((STEP_SECONDS * 3 + 30))s \
      -trace_stat -stf stats.csv -fd 1000 "$@" >/dev/null 2>&1)
  # Last line of the stats file: cumulative SuccessfulCall and FailedCall columns.
  python3 - "$dir/stats.csv" "$calls" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1]), delimiter=';')) if __import__('os').path.exists(sys.argv[1]) else []
if len(rows) < 2:
    print(sys.argv[2], sys.argv[2]); sys.exit()
head, last = rows[0], rows[-1]
ok = int(last[head.index('SuccessfulCall(C)')]); bad = int(last[head.index('FailedCall(C)')])
print(int(sys.argv[2]), int(sys.argv[2]) - ok if ok + bad < int(sys.argv[2]) else bad)
PY
}

# CPU time (ms, user + system) used so far by the processes whose command
# line matches $CPU_OF (pgrep -f), and their memory (MiB, proportional set
# size: Kamailio's children share its shared memory, which a sum of RSS
# would count once per child): the cost of each step, read beside its result.
CPU_OF=""
cpu_ms() {
  local ticks=0 rss=0 pss=0 pid
  for pid in $(pgrep -f "$CPU_OF" 2>/dev/null); do
    read -r t r < <(awk '{print $14 + $15, $24}' "/proc/$pid/stat" 2>/dev/null) || continue
    read -r p < <(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null)
    ticks=$((ticks + ${t:-0})); rss=$((rss + ${r:-0})); pss=$((pss + ${p:-0}))
  done
  echo "$(( ticks * 1000 / $(getconf CLK_TCK) )) $(( pss / 1024 )) MiB (PSS; RSS summed $(( rss * $(getconf PAGESIZE) / 1048576 )))"
}

# sweep NAME PORT [NUMBER] -> best passing CPS
sweep() {
  local name=$1 port=$2 number=${3:-123450} best=0
  for cps in $CPS_STEPS; do
    read -r cpu0 _ < <(cpu_ms)
    read -r attempted failed < <(STEP_NAME=$name run_step "$port" "$cps" -s "$number")
    read -r cpu1 mem < <(cpu_ms)
    local permille=$(( failed * 1000 / (attempted > 0 ? attempted : 1) ))
    printf '  %-10s %5s cps: %6s calls, %5s failed; %s ms CPU per call, %s after\n' "$name" "$cps" "$attempted" "$failed" \
      "$(python3 -c "print(f'{($cpu1 - $cpu0) / max($attempted, 1):.3f}')")" "$mem" >&2
    if [ "$failed" -le $((attempted / 1000)) ]; then best=$cps; else break; fi
  done
  echo "$best"
}

if want sipp; then
echo "== ceiling: SIPp UAC -> SIPp UAS" >&2
start_uas
CPU_OF="sipp.*-p $UAS_PORT"
CEILING=$(sweep sipp $UAS_PORT)
fi

if want kamailio; then
echo "== Kamailio 5.6 stateful proxy" >&2
sed -e "s/__KAM_PORT__/$KAM_PORT/" -e "s/__UAS_PORT__/$UAS_PORT/" benches/kamailio-proxy.cfg > "$WORK/kamailio.cfg"
kamailio -f "$WORK/kamailio.cfg" -P "$WORK/kamailio.pid" -Y "$WORK" -m 256 -M 32 >/dev/null 2>&1
sleep 1
start_uas
CPU_OF="kamailio -f $WORK"
KAMAILIO=$(sweep kamailio $KAM_PORT)
pkill -f "kamailio -f $WORK" 2>/dev/null; sleep 0.5
fi

echo "== yihaotong: trunk -> queue -> $AGENTS agents (SIPp UAS)" >&2
export YIHAOTONG_DATA_DIR=$WORK/yht YIHAOTONG_SIP__LISTEN=127.0.0.1:$YHT_PORT
# The harness's own queue (route 12399 below), apart from the SIPp agents' `main`.
export YIHAOTONG_QUEUES__LOADQ__DESCRIPTION="load harness seats"
python3 - "$AGENTS" > "$WORK/agents.csv" <<'PY'
import sys
print("SEQUENTIAL")
for i in range(int(sys.argv[1])): print(f"{7000+i};[authentication username={7000+i} password=bench-pw]")
PY
for i in $(seq 0 $((AGENTS - 1))); do
  echo "{\"op\":\"agents_add\",\"id\":\"$((7000 + i))\",\"password\":\"bench-pw\",\"name\":null,\"queues\":[\"main\"]}"
done > "$WORK/provision.jsonl"
# The harness's own runs use their own number and queue, apart from the SIPp agents.
echo '{"op":"routes_set","number":"12399","queue":"loadq","hotline":"load harness"}' >> "$WORK/provision.jsonl"
# A server of an earlier run may still be draining: wait for its port.
for _ in $(seq 60); do ss -Hlun "sport = :$YHT_PORT" 2>/dev/null | grep -q . || break; sleep 1; done
RUST_LOG=warn "$BIN" run >"$WORK/yht.log" 2>&1 &
YHT_PID=$!
sleep 1.5
python3 - "$WORK/yht/admin.sock" "$WORK/provision.jsonl" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile('rw')
for line in open(sys.argv[2]):
    f.write(line); f.flush(); assert '"ok":true' in f.readline()
PY
start_uas
(cd "$WORK" && sipp -sf "$ROOT/benches/sipp/register_many.xml" -inf "$WORK/agents.csv" -set agent_port $UAS_PORT \
   -i 127.0.0.1 -p $UAC_PORT 127.0.0.1:$YHT_PORT -m "$AGENTS" -r 200 -nostdin >/dev/null 2>&1) || echo "  (some agent registrations failed)" >&2
CPU_OF="^$BIN run"
if want yihaotong; then YIHAOTONG=$(sweep yihaotong $YHT_PORT); fi
echo '' > "$WORK/ivr-rtt.txt"
if want ivr; then
  echo "== yihaotong: IVR-answered calls (12345, its flow answers)" >&2
  IVR=$(sweep ivr $YHT_PORT 12345)
  # INVITE -> 200 per call at a fixed rate: SIPp's response-time trace.
  read -r p_att p_fail < <(run_step $YHT_PORT "$IVR_P99_CPS" -s 12345 -trace_rtt -rtt_freq 1)
  python3 - "$WORK/step-$YHT_PORT-$IVR_P99_CPS" "$IVR_P99_CPS" "$p_att" "$p_fail" > "$WORK/ivr-rtt.txt" <<'PY'
import csv, glob, sys
d, cps, att, fail = sys.argv[1:]
ms = []
for f in glob.glob(d + "/*_rtt.csv"):
    for row in csv.reader(open(f), delimiter=';'):
        try: ms.append(float(row[1]))
        except (ValueError, IndexError): pass
ms.sort()
q = lambda p: ms[min(len(ms) - 1, int(p * len(ms)))] if ms else float('nan')
print(f"IVR-answered at {cps} cps for the step: {att} calls, {fail} failed; INVITE->200 p50 {q(0.5):.2f} p90 {q(0.9):.2f} p99 {q(0.99):.2f} p99.9 {q(0.999):.2f} ms (n={len(ms)}, SIPp -trace_rtt)")
PY
fi

# Surge (TARGETS includes "surge"): SIPp offers SURGE_CPS (default twice the
# highest passing step, or 6400) for SURGE_SECONDS (60) to the same server
# while its resident memory and `status` are sampled each second. Then: how
# long until no call is alive, and a 1,000 cps step that must pass again.
if want surge; then
  SURGE_CPS=${SURGE_CPS:-$(( YIHAOTONG > 0 ? YIHAOTONG * 2 : 6400 ))}
  SURGE_SECONDS=${SURGE_SECONDS:-60}
  echo "== surge: $SURGE_CPS cps offered for $SURGE_SECONDS s" >&2
  ( while kill -0 "$YHT_PID" 2>/dev/null; do
      rss=$(awk '/VmRSS/ {print $2}' "/proc/$YHT_PID/status" 2>/dev/null)
      st=$("$BIN" status 2>/dev/null | python3 -c 'import json,sys; v=json.load(sys.stdin); o=v["overload"]; print(v["live_calls"], sum(o["shed"].values()), o["lag_ms_now"], json.dumps(o["shed"], separators=(",",":")))' 2>/dev/null)
      echo "$(date +%s) ${rss:-0} ${st:-dead}"
      sleep 1
    done ) > "$WORK/surge-samples.txt" &
  SAMPLER=$!
  read -r s_att s_fail < <(STEP_SECONDS=$SURGE_SECONDS run_step $YHT_PORT "$SURGE_CPS" -s 123450)
  surge_end=$(date +%s)
  while "$BIN" status 2>/dev/null | grep -q '"live_calls": *[1-9]'; do sleep 0.2; done
  drained=$(( $(date +%s) - surge_end ))
  read -r r_att r_fail < <(STEP_SECONDS=8 run_step $YHT_PORT 1000 -s 123450)
  kill "$SAMPLER" 2>/dev/null
  alive=no; kill -0 "$YHT_PID" 2>/dev/null && alive=yes
  echo "surge: agent states after: $("$BIN" status 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["agents"])' 2>/dev/null)" >&2
  python3 - "$WORK/surge-samples.txt" "$WORK/step-$YHT_PORT-$SURGE_CPS/stats.csv" "$SURGE_CPS" "$s_att" "$s_fail" "$drained" "$r_att" "$r_fail" "$alive" <<'PY' >&2
import csv, json, sys
samples, stats, cps, att, fail, drained, r_att, r_fail, alive = sys.argv[1:]
rows = [l.split() for l in open(samples) if len(l.split()) >= 6]
rows = [r for r in rows if r[2] != "dead"]
st = list(csv.reader(open(stats), delimiter=';'))
head, last = st[0], st[-1]
out = int(last[head.index('OutgoingCall(C)')]); ok = int(last[head.index('SuccessfulCall(C)')])
secs = sum(int(x) * m for x, m in zip(last[head.index('ElapsedTime(C)')].split(':')[:3], (3600, 60, 1)))
shed = json.loads(rows[-1][5]) if rows else {}
print(f"surge: offered {cps} cps; SIPp placed {out} calls in {secs} s ({out / max(secs, 1):.0f} cps achieved), {ok} completed, {fail} failed")
print(f"surge: 503s shed by reason {shed}; peak live calls {max(int(r[2]) for r in rows) if rows else 0}; worst lag {max(float(r[4]) for r in rows) if rows else 0:.0f} ms")
print(f"surge: resident memory before {int(rows[0][1]) // 1024 if rows else 0} MiB, peak {max(int(r[1]) for r in rows) // 1024 if rows else 0} MiB, after {int(rows[-1][1]) // 1024 if rows else 0} MiB")
print(f"surge: no call alive {drained} s after the surge; then 1000 cps for 8 s: {r_att} calls, {r_fail} failed; server alive: {alive}")
PY
fi

echo '{}' > "$WORK/register.json"; echo '{}' > "$WORK/queue.json"
if want harness; then
echo "== yihaotong load: register storm, queue calls with RTP" >&2
"$BIN" load --server 127.0.0.1:$YHT_PORT --scenario register --agents 50 --agent-base 8000 --provision --queue loadq --calls 20000 --concurrency 64 --json "$WORK/register.json" >/dev/null
"$BIN" load --server 127.0.0.1:$YHT_PORT --scenario queue --agents 200 --agent-base 8000 --provision --queue loadq --number 12399 --calls 2000 --cps 100 --talk-ms 1000 --ring-ms 50 --json "$WORK/queue.json" >/dev/null
fi
# Concurrent calls: the most prompt streams (callers in 12345's greeting) and
# the most bridged calls (trunk -> queue loadq -> a harness seat, RTP both
# ways through the relay) held at once with loss under 0.1%, the p99 of
# RFC 3550's per-packet D under 5 ms at both ends, and at most 0.1% of calls
# failed (a call shed with 503 means the server refused that concurrency).
# Each step of N: 2N calls of 10 s at N/10 a second (8 s at N/8 in the IVR),
# so about N are up at once mid-run (the server's own count is printed).
CONC_STREAMS=0 CONC_BRIDGED=0
if want concurrency; then
  conc_step() { # SCENARIO N -> prints "pass" or "fail", and a line on stderr
    local scenario=$1 n=$2 json="$WORK/conc-$1-$2.json"
    # Callers in the IVR hang up after 8 s, inside 12345's 8.8 s greeting
    # (after it they would queue for this run's SIPp seats).
    local extra=(--talk-ms 8000 --cps $((n / 8)))
    if [ "$scenario" = queue ]; then
      extra=(--talk-ms 10000 --cps $((n / 10)) --provision --agents $((n + n / 10)) --agent-base 20000
             --queue loadq --number 12399 --ring-ms 50)
    fi
    "$BIN" load --server 127.0.0.1:$YHT_PORT --scenario "$scenario" "${extra[@]}" \
      --calls $((2 * n)) --max-seconds 120 --json "$json" >/dev/null 2>&1
    python3 - "$json" "$scenario" "$n" <<'PY'
import json, sys
path, scenario, n = sys.argv[1:]
try:
    r = json.load(open(path))
except (OSError, ValueError):
    print("fail"); print(f"  {scenario:8} {n:>5}: no report", file=sys.stderr); sys.exit()
ends = [r["caller_rtp"]] + ([r["agent_rtp"]] if scenario == "queue" else [])
loss = max(100 * (e["expected"] - e["received"]) / max(e["expected"], 1) for e in ends)
dev = max(e["interarrival_dev_p99_ms"] for e in ends)
failed = sum(r["failed"].values())
srv = r.get("server") or {}
ok = failed * 1000 <= r["attempted"] and loss < 0.1 and dev < 5.0 and all(e["received"] for e in ends)
print("pass" if ok else "fail")
print(f"  {scenario:8} {n:>5}: {srv.get('peak_live_calls', '?')} up at most, {failed} of {r['attempted']} failed "
      f"{r['failed'] or ''}, loss {loss:.3f}% ({sum(e['dropped_by_harness'] for e in ends)} at the harness's sockets), "
      f"D p99 {dev:.2f} ms, jitter max {max(e['max_jitter_ms'] for e in ends):.2f} ms, "
      f"server {srv.get('cpu_ms_per_call', 0):.2f} ms CPU and {srv.get('kib_per_live_call', 0):.1f} KiB per call"
      f" -> {'pass' if ok else 'fail'}", file=sys.stderr)
PY
  }
  echo "== concurrent prompt streams (12345's greeting; steps: ${CONC_STREAM_STEPS:=500 1000 1500 2000 2500 3000})" >&2
  for n in $CONC_STREAM_STEPS; do
    [ "$(conc_step ivr "$n")" = pass ] && CONC_STREAMS=$n || break
  done
  echo "== concurrent bridged calls (trunk -> loadq -> a harness seat; steps: ${CONC_BRIDGED_STEPS:=250 500 750 1000 1250 1500})" >&2
  for n in $CONC_BRIDGED_STEPS; do
    [ "$(conc_step queue "$n")" = pass ] && CONC_BRIDGED=$n || break
  done
fi
kill "$YHT_PID" 2>/dev/null; YHT_PID=

python3 - "$CEILING" "$KAMAILIO" "$YIHAOTONG" "$WORK/register.json" "$WORK/queue.json" "$STEP_SECONDS" "$IVR" "$WORK/ivr-rtt.txt" "$CONC_STREAMS" "$CONC_BRIDGED" <<'PY'
import json, sys
ceiling, kam, yht = (int(x) for x in sys.argv[1:4])
reg, q = json.load(open(sys.argv[4])), json.load(open(sys.argv[5]))
ivr, ivr_rtt = int(sys.argv[7]), open(sys.argv[8]).read().strip()
ratio = lambda a, b: f"{a / b:.2f}x" if b else "n/a"
print(f"\nSignalling, highest CPS step with <= 0.1% failed calls ({sys.argv[6]} s per step):")
print(f"| target | CPS | vs Kamailio | vs SIPp ceiling |\n|---|---|---|---|")
print(f"| SIPp UAC -> UAS direct | {ceiling} | {ratio(ceiling, kam)} | 1.00x |")
print(f"| Kamailio 5.6 stateful proxy | {kam} | 1.00x | {ratio(kam, ceiling)} |")
print(f"| yihaotong trunk -> agent (B2BUA, media anchored) | {yht} | {ratio(yht, kam)} | {ratio(yht, ceiling)} |")
print(f"| yihaotong IVR-answered (12345's flow) | {ivr} | {ratio(ivr, kam)} | {ratio(ivr, ceiling)} |")
if ivr_rtt:
    print(ivr_rtt)
if sys.argv[9] != "0" or sys.argv[10] != "0":
    print(f"\nConcurrent, highest passing step (loss < 0.1%, D p99 < 5 ms, <= 0.1% failed; harness on the same cores): "
          f"{sys.argv[9]} prompt streams, {sys.argv[10]} bridged calls")
if not reg or not q:
    sys.exit()
print(f"\nyihaotong load, register storm: {reg['completed']}/{reg['attempted']} in {reg['seconds']:.1f} s = {reg['completed']/reg['seconds']:.0f} REGISTER+auth/s, p99 {reg['setup_180_ms']['p99']:.2f} ms")
c, a = q['caller_rtp'], q['agent_rtp']
print(f"yihaotong load, queue calls: {q['completed']}/{q['attempted']} at {q['achieved_cps']:.0f} cps; INVITE->200 p50 {q['setup_200_ms']['p50']:.1f} p99 {q['setup_200_ms']['p99']:.1f} ms; "
      f"RTP loss {100*(c['expected']-c['received'])/max(c['expected'],1):.3f}% / {100*(a['expected']-a['received'])/max(a['expected'],1):.3f}%, "
      f"inter-arrival dev p99 {c['interarrival_dev_p99_ms']:.2f} / {a['interarrival_dev_p99_ms']:.2f} ms (callers / agents)")
PY
