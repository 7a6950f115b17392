#!/usr/bin/env bash
# The Debian package, as an admin meets it: built with cargo-deb from the
# release binary, its systemd unit checked by `systemd-analyze verify`,
# installed with apt (the system user and /var/lib/yihaotong made by
# postinst), its settings checked, and the packaged server started as that
# user, as the unit's ExecStart would (CI has no running systemd), until it
# answers OPTIONS over loopback; then purged.
# Usage: tests/package.sh   (as root; installs cargo-deb if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo deb --version >/dev/null 2>&1; then
  echo "== installing cargo-deb"
  cargo install cargo-deb --locked --quiet
fi
[ -x target/release/yihaotong ] || cargo build --release
# --strip: the release profile keeps line tables (debug = 1) for profiling;
# the package does not (122 MB -> about 20 MB).
cargo deb --no-build --strip --quiet >/dev/null
deb=$(ls -t target/debian/yihaotong_*.deb | head -n 1)
echo "== $deb ($(du -h "$deb" | cut -f1))"
fail=0
check() { # description, then a command that must succeed
  local what=$1; shift
  if "$@"; then echo "ok   $what"; else echo "FAIL $what"; fail=1; fi
}
contents=$(dpkg-deb --contents "$deb")
for path in ./usr/bin/yihaotong ./etc/yihaotong/yihaotong.toml \
  ./usr/share/yihaotong/sounds/common/hold-music.flac \
  ./usr/share/yihaotong/ivr-flows/12345.toml ./usr/share/yihaotong/ivr-flows/calendars/ \
  ; do
  check "the package holds $path" grep -q " $path" <<<"$contents"
done
check "its unit is there" grep -qE " ./(usr/)?lib/systemd/system/yihaotong.service" <<<"$contents"

DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "./$deb" >/dev/null
unit=$(ls /lib/systemd/system/yihaotong.service /usr/lib/systemd/system/yihaotong.service 2>/dev/null | head -n 1)
check "systemd-analyze verify finds nothing in $unit" bash -c "out=\$(systemd-analyze verify '$unit' 2>&1); echo \"\$out\"; [ -z \"\$out\" ]"
check "the conffile is registered" grep -q "/etc/yihaotong/yihaotong.toml" /var/lib/dpkg/info/yihaotong.conffiles
check "the system user exists" id yihaotong
check "its data folder is its own" bash -c '[ "$(stat -c %U /var/lib/yihaotong)" = yihaotong ]'
size=$(stat -c %s /usr/bin/yihaotong)
check "the binary is stripped ($size bytes)" bash -c "! objdump -h /usr/bin/yihaotong | grep -q debug_info && [ $size -lt 60000000 ]"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
PORT=$(free_port)
API_PORT=$(free_port)
# As the unit runs it: that user, in its StateDirectory. setpriv execs the
# server itself, so the SIGTERM below reaches it.
service=(env -C /var/lib/yihaotong YIHAOTONG_SIP__LISTEN=127.0.0.1:$PORT YIHAOTONG_ADMIN__LISTEN=127.0.0.1:$API_PORT
  setpriv --reuid=yihaotong --regid=yihaotong --init-groups
  /usr/bin/yihaotong --config /etc/yihaotong/yihaotong.toml)
check "check passes on the packaged settings, as the service user" "${service[@]}" check
LOG=$(mktemp)
"${service[@]}" run >"$LOG" 2>&1 &
SERVER=$!
answered() {
  python3 - "$PORT" <<'PY'
import socket, sys, time
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); s.settimeout(0.5)
me = "127.0.0.1:%d" % s.getsockname()[1]
for i in range(40):
    msg = (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKpkg{i}\r\nMax-Forwards: 70\r\n"
           f"From: <sip:probe@127.0.0.1>;tag=pkg\r\nTo: <sip:127.0.0.1:{port}>\r\nCall-ID: pkg-{i}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    s.sendto(msg.encode(), ("127.0.0.1", port))
    try:
        if s.recv(65535).startswith(b"SIP/2.0 200"):
            sys.exit(0)
    except socket.timeout:
        time.sleep(0.25)
sys.exit(1)
PY
}
check "the packaged server, run as yihaotong, answers OPTIONS" answered
check "it made its database under /var/lib/yihaotong" test -f /var/lib/yihaotong/db.redb
kill -TERM $SERVER; wait $SERVER || true
check "it stopped cleanly on SIGTERM" grep -q "stopped" "$LOG"
[ $fail -eq 0 ] || cat "$LOG"
DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq yihaotong >/dev/null
rm -rf /var/lib/yihaotong
userdel yihaotong 2>/dev/null || true
if [ $fail -ne 0 ]; then echo "package: FAILED"; exit 1; fi
echo "package: all held"
