#!/usr/bin/env bash
# Schemathesis (PyPI), property-based testing from the API's own OpenAPI
# document, against the release binary: every operation the document
# describes (the never-ending /events stream aside) is called with generated
# and mutated input, with an admin token, and no answer may be a 5xx.
# Usage: tests/schemathesis.sh [max-examples]   (installs schemathesis if missing)
set -uo pipefail
cd "$(dirname "$0")/.."
EXAMPLES=${1:-30}
# Run as a module: no dependence on where pip puts its scripts.
if ! python3 -m schemathesis.cli --version >/dev/null 2>&1; then
  python3 -m pip install -q 'schemathesis==4.32.5' || exit 1
fi
[ -x target/release/yihaotong ] || cargo build --release
BIN=$PWD/target/release/yihaotong
WORK=$(mktemp -d)
export YIHAOTONG_DATA_DIR=$WORK/data YIHAOTONG_SIP__LISTEN=127.0.0.1:25071 \
  YIHAOTONG_ADMIN__LISTEN=127.0.0.1:28071 YIHAOTONG_RTP__PORT_MIN=26000 YIHAOTONG_RTP__PORT_MAX=26099
# An agent to act on, and the token, written before the server takes the database.
"$BIN" agents add 1001 --password s3cret-pw --queues main >/dev/null
TOKEN=$("$BIN" tokens add schemathesis --role admin | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
"$BIN" run >"$WORK/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 200); do
  curl -sf http://127.0.0.1:28071/readyz >/dev/null 2>&1 && break
  kill -0 $PID 2>/dev/null || { echo "server did not start:"; cat "$WORK/server.log"; exit 1; }
  sleep 0.1
done
python3 -m schemathesis.cli run http://127.0.0.1:28071/openapi.json \
  -H "Authorization: Bearer $TOKEN" \
  --checks not_a_server_error --max-examples "$EXAMPLES" \
  --exclude-path /events --request-timeout 5 --seed 20261204
rc=$?
kill -0 $PID 2>/dev/null || { echo "the server died under schemathesis:"; cat "$WORK/server.log"; exit 1; }
exit $rc
