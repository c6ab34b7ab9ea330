#!/usr/bin/env bash
# A real OCI registry (Debian's docker-registry, distribution 2.8) on 127.0.0.1 for tests.
#   Tests/images/registry.sh start DIR [--basic USER:PASS | --token USER:PASS [--anonymous-pull]]
#       starts it with its storage, config and logs in DIR; prints HOST:PORT (also in DIR/address)
#   Tests/images/registry.sh stop DIR
# --basic: htpasswd (bcrypt) basic auth. --token: the registry's `auth: token`, with tokens from
# token-server.py beside this script, RS256-signed by a key whose self-signed certificate the
# registry trusts; --anonymous-pull lets it give pull tokens without credentials.
# --owner PID: stop the servers when process PID is gone (a test process that dies early).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cmd=${1:?start or stop}; dir=${2:?DIR}
mkdir -p "$dir"; dir=$(cd "$dir" && pwd)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() { # PORT PID LOG
    for _ in $(seq 100); do
        if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null; then return 0; fi
        kill -0 "$2" 2>/dev/null || { echo "registry.sh: $3 exited:" >&2; tail -5 "$3" >&2; return 1; }
        sleep 0.1
    done
    echo "registry.sh: nothing listens on port $1 (log $3)" >&2; return 1
}

case $cmd in
stop)
    for f in "$dir"/registry.pid "$dir"/token.pid; do
        # SIGKILL: a test process may have started the servers with signals blocked.
        [[ -f $f ]] && { kill -9 "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; }
    done
    exit 0 ;;
start) ;;
*) echo "registry.sh: start or stop, not '$cmd'" >&2; exit 2 ;;
esac
shift 2
auth=none; creds=; anonymous=0; owner=
while (($#)); do
    case $1 in
    --basic) auth=basic; creds=$2; shift ;;
    --token) auth=token; creds=$2; shift ;;
    --anonymous-pull) anonymous=1 ;;
    --owner) owner=$2; shift ;;
    *) echo "registry.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

mkdir -p "$dir/storage"
port=$(free_port)
auth_yaml=
case $auth in
basic)
    htpasswd -Bbn "${creds%%:*}" "${creds#*:}" > "$dir/htpasswd"
    auth_yaml="auth:
  htpasswd:
    realm: kiln-test
    path: $dir/htpasswd" ;;
token)
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/token.key" -out "$dir/token.crt" -days 3 \
        -subj /CN=kiln-test-token 2>/dev/null
    tport=$(free_port)
    args=("$tport" "$dir/token.key" "$dir/token.crt" kiln-test-issuer kiln-test-registry "$creds")
    ((anonymous)) && args+=(--anonymous-pull)
    setsid python3 "$here/token-server.py" "${args[@]}" </dev/null >"$dir/token.log" 2>&1 &
    echo $! > "$dir/token.pid"
    wait_port "$tport" "$(cat "$dir/token.pid")" "$dir/token.log"
    auth_yaml="auth:
  token:
    realm: http://127.0.0.1:$tport/token
    service: kiln-test-registry
    issuer: kiln-test-issuer
    rootcertbundle: $dir/token.crt" ;;
esac

cat > "$dir/config.yml" <<YAML
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
  secret: kiln-test-secret
$auth_yaml
YAML
setsid docker-registry serve "$dir/config.yml" </dev/null >"$dir/registry.log" 2>&1 &
echo $! > "$dir/registry.pid"
wait_port "$port" "$(cat "$dir/registry.pid")" "$dir/registry.log"
if [[ -n $owner ]]; then
    # The pids are the watchdog's own arguments: the directory may be gone by the time it acts.
    pids=("$(cat "$dir/registry.pid")"); [[ -f $dir/token.pid ]] && pids+=("$(cat "$dir/token.pid")")
    setsid bash -c 'owner=$1; shift; while kill -0 "$owner" 2>/dev/null && kill -0 "$1" 2>/dev/null; do sleep 1; done; kill -9 "$@" 2>/dev/null' \
        watchdog "$owner" "${pids[@]}" </dev/null >/dev/null 2>&1 &
fi
echo "127.0.0.1:$port" > "$dir/address"
echo "127.0.0.1:$port"
