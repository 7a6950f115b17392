#!/usr/bin/env bash
# SIPVicious (Debian package `sipvicious`), the scanner kit that finds every
# public SIP port, against the release binary inside a loopback-only network
# namespace (`unshare -n`: only lo). The attacker sends from 127.0.0.2, which
# is neither the trunk (127.0.0.9 here) nor a registered agent.
#   svmap    finds the server only when `[sip] answer_strangers` is on;
#   svwar    cannot tell real accounts (1001, 1005) from made-up ones, even
#            with strangers answered (unknown = wrong password, same code);
#   svcrack  is blocked after `auth_fail_limit` guesses: it never reaches the
#            real password, placed at word 800 of a 1,000-word list.
# Usage: tests/sipvicious.sh   (installs sipvicious if missing; exit 0 = all held)
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${SV_IN_NETNS:-}" ]; then
  if ! command -v svmap >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sipvicious >/dev/null
  fi
  [ -x target/release/yihaotong ] || cargo build --release
  exec unshare -n env SV_IN_NETNS=1 "$0" "$@"
fi
ip link set lo up
BIN=$PWD/target/release/yihaotong
PORT=5080
ATTACKER=127.0.0.2
PASSWORD='Tr0ub4dor-37'
WORK=$(mktemp -d)
fail=0
check() { # description, then a command that must succeed
  local what=$1; shift
  if "$@"; then echo "ok   $what"; else echo "FAIL $what"; fail=1; return 1; fi
}

start() { # answer_strangers [stranger_options]
  export YIHAOTONG_DATA_DIR=$WORK/data-$1-${2:-same} YIHAOTONG_SIP__LISTEN=127.0.0.1:$PORT \
    YIHAOTONG_TRUNK__ALLOW=127.0.0.9/32 YIHAOTONG_SIP__ANSWER_STRANGERS=$1 \
    YIHAOTONG_SIP__STRANGER_OPTIONS=${2:-same}
  LOG=$WORK/server-$1-${2:-same}.log
  # Accounts first, written straight to the database: the server is not up
  # yet, so the CLI cannot race it for the database lock.
  for id in 1001 1005; do
    "$BIN" agents add $id --password "$PASSWORD" --queues main >/dev/null
  done
  RUST_LOG=yihaotong=info "$BIN" run >"$LOG" 2>&1 &
  PID=$!
  # A loaded machine (another build, another CI run) can take seconds.
  for _ in $(seq 600); do
    kill -0 $PID 2>/dev/null || break
    "$BIN" status >/dev/null 2>&1 && break
    sleep 0.1
  done
  up "the server started (answer_strangers = $1, stranger_options = ${2:-same})" \
    || { cat "$LOG"; exit 1; }
}
# Every probe below must have met a live server: a dead one "resists" all.
up() { check "$1" bash -c "kill -0 $PID 2>/dev/null && '$BIN' status >/dev/null 2>&1"; }
stop() { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; }

# --- svmap: silence unless strangers are answered
start false
svmap -b $ATTACKER -p $PORT 127.0.0.1 >"$WORK/svmap-false.txt" 2>&1
check "svmap does not find a server that ignores strangers" \
  bash -c "! grep -q '127.0.0.1:$PORT' '$WORK/svmap-false.txt'"
up "the server was up throughout"
stop
# OPTIONS decided on their own: answered while all else from strangers is
# ignored (a monitoring probe), or ignored while strangers are answered.
start false answer
svmap -b $ATTACKER -p $PORT 127.0.0.1 >"$WORK/svmap-options.txt" 2>&1
check "svmap finds it when only OPTIONS are answered" grep -q "127.0.0.1:$PORT" "$WORK/svmap-options.txt"
svmap -b $ATTACKER -p $PORT -m INVITE 127.0.0.1 >"$WORK/svmap-invite.txt" 2>&1
check "but not by INVITE then" bash -c "! grep -q '127.0.0.1:$PORT' '$WORK/svmap-invite.txt'"
stop
start true ignore
svmap -b $ATTACKER -p $PORT 127.0.0.1 >"$WORK/svmap-ignore.txt" 2>&1
check "svmap (OPTIONS) does not find it when OPTIONS are ignored" \
  bash -c "! grep -q '127.0.0.1:$PORT' '$WORK/svmap-ignore.txt'"
up "the server was up throughout"
stop

start true
svmap -b $ATTACKER -p $PORT 127.0.0.1 >"$WORK/svmap-true.txt" 2>&1
check "svmap finds it when answer_strangers = true" grep -q "127.0.0.1:$PORT" "$WORK/svmap-true.txt"
check "and learns no product name" bash -c "! grep -qi yihaotong '$WORK/svmap-true.txt'"

# --- svwar: 1000-1010 holds two real accounts; both must look like the rest
# (svwar gives up by itself on seeing a challenge for a made-up extension;
# --force makes it go on and report what each extension got.)
for force in "" --force; do
  svwar -b $ATTACKER -p $PORT -e1000-1010 $force 127.0.0.1 >"$WORK/svwar$force.txt" 2>&1
  found=$(grep -oE '^\| *10[0-9][0-9] ' "$WORK/svwar$force.txt" | tr -dc '0-9\n' | sort -u | tr '\n' ' ')
  check "svwar ${force:-(default)} cannot single out 1001 and 1005 (reported: '${found}')" \
    bash -c "[ -z '$found' ] || [ \$(echo $found | wc -w) -ge 11 ]"
  check "svwar ${force:-(default)} was answered (not met with silence)" \
    bash -c "! grep -qE 'timed out|no server response' '$WORK/svwar$force.txt'"
done
up "the server was up throughout"

# --- svcrack: the real password is word 800 of 1,000
python3 - "$WORK/words.txt" "$PASSWORD" <<'PY'
import sys
words = [f"guess{i:04d}" for i in range(1000)]
words[799] = sys.argv[2]
open(sys.argv[1], "w").write("\n".join(words) + "\n")
PY
# One minute of cracking: at 5 failures the account is blocked at the
# attacker's source for 30 s, then 60 s... (svcrack gives up at the first
# 403 to a guess).
timeout 60 svcrack -b $ATTACKER -p $PORT -u 1001 -d "$WORK/words.txt" 127.0.0.1 >"$WORK/svcrack.txt" 2>&1
check "svcrack does not find the password" bash -c "! grep -q -- '$PASSWORD' '$WORK/svcrack.txt'"
check "the account was blocked at the attacker's source, and the block logged" \
  grep -qE "blocking account at this source.*account.*1001" "$LOG"
guesses=$(grep -c "authentication failed" "$LOG")
check "blocked long before the list: $guesses failed guesses counted" [ "$guesses" -le 10 ]
check "status counts the guesses against account 1001 and the blocks" \
  bash -c "'$BIN' status --format json | python3 -c 'import json,sys; a=json.load(sys.stdin)[\"auth\"]; sys.exit(not (a[\"account_blocks_since_start\"] >= 1 and any(x[\"account\"] == \"1001\" for x in a[\"failures_by_account\"])))'"
# The real agent, from its own address, still registers: an account is
# locked only at the source that guessed.
check "the account itself is not locked" \
  python3 - "$PORT" "$PASSWORD" <<'PY'
import hashlib, re, socket, sys
port, password = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.3", 0)); s.settimeout(2)
me = "127.0.0.3:%d" % s.getsockname()[1]
def register(n, auth=""):
    msg = (f"REGISTER sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKsv{n}\r\nMax-Forwards: 70\r\n"
           f"From: <sip:1001@12345.hotline>;tag=sv\r\nTo: <sip:1001@12345.hotline>\r\nCall-ID: sv-agent\r\nCSeq: {n} REGISTER\r\n"
           f"Contact: <sip:1001@{me}>\r\n{auth}Expires: 60\r\nContent-Length: 0\r\n\r\n")
    s.sendto(msg.encode(), ("127.0.0.1", port))
    return s.recv(65535).decode(errors="replace")
first = register(1)
nonce = re.search(r'nonce="([^"]+)"', first).group(1)
realm = re.search(r'realm="([^"]+)"', first).group(1)
uri = f"sip:127.0.0.1:{port}"
ha1 = hashlib.md5(f"1001:{realm}:{password}".encode()).hexdigest()
ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
resp = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
second = register(2, f'Authorization: Digest username="1001", realm="{realm}", nonce="{nonce}", uri="{uri}", response="{resp}", algorithm=MD5\r\n')
sys.exit(0 if second.startswith("SIP/2.0 200") else 1)
PY
stop
[ $fail -ne 0 ] && { echo "--- logs in $WORK"; tail -n 5 "$WORK"/*.txt; }
exit $fail
