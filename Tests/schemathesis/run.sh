#!/usr/bin/env bash
# Checks `kiln serve`'s control API against docs/openapi.yml with schemathesis (from PyPI, in
# .venv-schemathesis): no 5xx for any request it makes, and every response as the description
# says (status code, content type, body schema). The service runs on loopback with one tenant
# whose maxSandboxes is 0, so that no VM is ever started: creates answer 429 (or 404 for a
# template that does not exist), and every sandbox id is unknown.
#   Tests/schemathesis/run.sh [MAX_EXAMPLES [SECONDS]]   # default 100 examples per operation (about 25 s here), 300 s at most
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
examples=${1:-100}
seconds=${2:-300}
venv=.venv-schemathesis
if [[ $("$venv/bin/schemathesis" --version 2>/dev/null) != *4.32.5* ]]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'schemathesis==4.32.5'
fi
command -v swift >/dev/null || export PATH=/opt/swift/usr/bin:$PATH
swift build --product kiln >/dev/null

work=$(mktemp -d /tmp/kiln-schemathesis-XXXXXX)
key="schemathesis-$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')"
printf '{"tenants": [{"name": "schemathesis", "apiKeys": ["%s"], "maxSandboxes": 0, "maxMemoryMiB": 0}]}\n' "$key" >"$work/tenants.json"
.build/debug/kiln serve --listen 127.0.0.1:0 --tenants "$work/tenants.json" --state-dir "$work/state" 2>"$work/serve.log" &
server=$!
cleanup() {
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
url=""
for _ in $(seq 600); do  # up to 60 s: a first start after a build reads a cold 100 MiB binary
    url=$(sed -n 's/^kiln serve: listening on \(http:[^ ]*\)$/\1/p' "$work/serve.log")
    [[ -n $url ]] && break
    kill -0 "$server" 2>/dev/null || { cat "$work/serve.log" >&2; echo "run.sh: kiln serve did not start" >&2; exit 1; }
    sleep 0.1
done
[[ -n $url ]] || { echo "run.sh: kiln serve did not say where it listens" >&2; exit 1; }
echo "run.sh: kiln serve at $url"

started=$(date +%s)
status=0
# --max-examples bounds the work; timeout(1) bounds the time (schemathesis stops at SIGINT and reports).
timeout --signal=INT "$seconds" "$venv/bin/schemathesis" run docs/openapi.yml \
    --url "$url" \
    --workers 2 \
    --generation-database none \
    --phases examples,fuzzing,stateful \
    --header "X-API-Key: $key" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
    --max-examples "$examples" \
    --request-timeout 30 \
    --seed 1 \
    --no-color || status=$?
echo "run.sh: schemathesis took $(( $(date +%s) - started )) s (exit $status)"
if ! kill -0 "$server" 2>/dev/null; then
    echo "run.sh: kiln serve died during the run:" >&2
    tail -40 "$work/serve.log" >&2
    status=1
fi
exit "$status"
