#!/usr/bin/env bash
# Account enumeration by timing, measured at the wire: a REGISTER with a
# wrong password for a real account (1001) and for a made-up one (7001),
# alternating, over UDP on loopback, against the release server with the
# lock-out lifted (so every attempt is checked). Prints the answer codes and
# the round-trip times of each kind; they must not tell the two apart.
# Usage: benches/enumeration.sh [ATTEMPTS_PER_KIND]   (default 5000)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5000}
BIN=$PWD/target/release/yihaotong
cargo build --release -q
WORK=$(mktemp -d)
PORT=5097
export YIHAOTONG_DATA_DIR=$WORK/data YIHAOTONG_SIP__LISTEN=127.0.0.1:$PORT \
  YIHAOTONG_SIP__AUTH_FAIL_LIMIT=1000000000
"$BIN" agents add 1001 --password 'the-right-password' --queues main >/dev/null
"$BIN" run >"$WORK/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 300); do "$BIN" status >/dev/null 2>&1 && break; sleep 0.1; done
python3 - "$PORT" "$N" <<'PY'
import re, socket, statistics, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.2", 0)); s.settimeout(2)
me = "127.0.0.2:%d" % s.getsockname()[1]
seq = 0
def register(user, auth=""):
    global seq
    seq += 1
    msg = (f"REGISTER sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKen{seq}\r\nMax-Forwards: 70\r\n"
           f"From: <sip:{user}@12345.hotline>;tag=en\r\nTo: <sip:{user}@12345.hotline>\r\nCall-ID: en-{user}\r\nCSeq: {seq} REGISTER\r\n"
           f"Contact: <sip:{user}@{me}>\r\n{auth}Expires: 60\r\nContent-Length: 0\r\n\r\n").encode()
    start = time.perf_counter_ns()
    s.sendto(msg, ("127.0.0.1", port))
    answer = s.recv(65535).decode(errors="replace")
    return answer, (time.perf_counter_ns() - start) / 1000
times = {"1001": [], "7001": []}
codes = {"1001": set(), "7001": set()}
first, _ = register("1001")
nonce = re.search(r'nonce="([^"]+)"', first).group(1)
realm = re.search(r'realm="([^"]+)"', first).group(1)
for i in range(2 * n + 200):
    user = "1001" if i % 2 == 0 else "7001"
    auth = (f'Authorization: Digest username="{user}", realm="{realm}", nonce="{nonce}", '
            f'uri="sip:127.0.0.1:{port}", response="0123456789abcdef0123456789abcdef", algorithm=MD5\r\n')
    answer, us = register(user, auth)
    if i >= 200:  # warm-up left out
        times[user].append(us)
        codes[user].add(answer.split("\r\n", 1)[0])
def line(user, label):
    t = sorted(times[user]); k = len(t)
    mean = statistics.fmean(t); se = statistics.stdev(t) / k ** 0.5
    return f"| {label} | {k} | {', '.join(sorted(codes[user]))} | {t[k // 2]:.1f} | {t[k * 9 // 10]:.1f} | {t[k * 99 // 100]:.1f} | {mean:.1f} ± {1.96 * se:.1f} |"
print("| REGISTER, wrong password | attempts | answer | p50 µs | p90 µs | p99 µs | mean µs (95% CI) |")
print("|---|---|---|---|---|---|---|")
print(line("1001", "real account 1001"))
print(line("7001", "made-up account 7001"))
same = codes["1001"] == codes["7001"]
print(f"same answer: {'yes' if same else 'NO'}; median difference {sorted(times['1001'])[n // 2] - sorted(times['7001'])[n // 2]:+.1f} µs")
sys.exit(0 if same else 1)
PY
