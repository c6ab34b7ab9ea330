#!/usr/bin/env bash
# Issue 14's chaos cases that need a boot each, too slow for CI on hosts whose guest kernel mode
# is emulated (the ones that fit are Tests/KilnTests/ChaosTests.swift). Each case prints PASS or
# FAIL and what it saw; results are in docs/security.md, "Chaos". Run as root, from the repository:
#   Benchmarks/chaos.sh [case...]    cases: create-killed full-cache damaged-auto net-vmm-killed
#       vmm-killed-booting vmm-killed-restoring serve-vmm-killed-pausing control-snapshot-full
# KILN names the kiln binary (default .build/debug/kiln). Private caches under a temporary
# directory link the kernel, images and agent disk of /var/cache/kiln; net-vmm-killed and
# vmm-killed-restoring use (and may add a template to) /var/cache/kiln itself, and
# serve-vmm-killed-pausing its `default` template (with a private state directory). Needs curl,
# jq and python3 (the control socket's client).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
KILN=${KILN:-$PWD/.build/debug/kiln}
CACHE=/var/cache/kiln
WORK=$(mktemp -d /tmp/kiln-chaos.XXXXXX)
MOUNTED=()
cleanup() {
    for m in "${MOUNTED[@]}"; do umount "$m" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT
passed=0 failed=0
pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# A cache of its own: the real cache's kernel, images and agent disk, an empty templates dir.
private_cache() {
    mkdir -p "$1/templates"
    for d in kernel images agent-disk initramfs; do [ -e "$CACHE/$d" ] && ln -sfn "$CACHE/$d" "$1/$d"; done
}

# What a kiln process with pid $1 may leave: jail directories, cgroups, runtime directories.
leftovers() {
    ls -d /run/kiln/jail/"$1"-* /run/kiln/sandbox-"$1"-* /sys/fs/cgroup/kiln/"$1"-* \
        /sys/fs/cgroup/*/kiln/"$1"-* /sys/fs/cgroup/memory/*/kiln/"$1"-* 2>/dev/null
}

# Polls (every 20 ms, up to $2 s) until the command in $1 succeeds.
wait_for() {
    local deadline
    deadline=$(awk -v a="$(now)" -v b="$2" 'BEGIN { printf "%.3f", a + b }')
    until eval "$1"; do
        awk -v a="$(now)" -v d="$deadline" 'BEGIN { exit !(a > d) }' && return 1
        sleep 0.02
    done
}

# SIGKILL of `kiln template create` while it boots and while it writes the snapshot: the half-made
# template is never used (`kiln run --template` refuses it in one line), and the next create
# removes the staging directory the killed one left and makes a usable template.
case_create_killed() {
    local c=$WORK/create-killed phase p out rc
    private_cache "$c"
    for phase in boot snapshot; do
        KILN_CACHE_DIR=$c "$KILN" template create chaos >"$WORK/create.out" 2>&1 &
        p=$!
        if [ $phase = boot ]; then
            sleep 3
        else
            wait_for "ls -d '$c/templates/.chaos.tmp-$p' >/dev/null 2>&1" 900 || { fail create-killed "no staging directory"; kill -KILL $p; return; }
        fi
        kill -KILL $p
        wait $p 2>/dev/null
        out=$(KILN_CACHE_DIR=$c "$KILN" run --template chaos -- true 2>&1)
        rc=$?
        if [ $rc -ne 0 ] && [ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ]; then
            pass "create-killed ($phase): kiln run --template says '$out' (exit $rc)"
        else
            fail "create-killed ($phase)" "exit $rc: $out"
        fi
        echo "  left in the cache: $(ls -A "$c/templates" | tr '\n' ' ')"
        killed+=" $p"
    done
    local t0
    t0=$(now)
    if KILN_CACHE_DIR=$c "$KILN" template create chaos >/dev/null 2>"$WORK/create.err"; then
        local left
        left=$(ls -A "$c/templates" | tr '\n' ' ')
        [ "$left" = "chaos " ] && pass "create-killed: the next create ($(since "$t0") s) swept the staging and made the template" \
            || fail create-killed "left in the cache: $left"
    else
        fail create-killed "the next create failed: $(cat "$WORK/create.err")"
    fi
    for p in $killed; do
        [ -z "$(leftovers "$p")" ] && pass "create-killed: nothing of pid $p left" || fail create-killed "left: $(leftovers "$p")"
    done
}

# `kiln run`'s first run with a full cache disk (16 MiB tmpfs): the template cannot be saved; the
# run says so in one line and goes on with the sandbox it booted; nothing is left in the cache.
case_full_cache() {
    local c=$WORK/full-cache out rc
    mkdir -p "$c"
    mount -t tmpfs -o size=16m kiln-chaos "$c" || { fail full-cache "cannot mount a tmpfs"; return; }
    MOUNTED+=("$c")
    private_cache "$c"
    out=$(KILN_CACHE_DIR=$c "$KILN" run -- echo ok 2>"$WORK/full.err")
    rc=$?
    local warning
    warning=$(grep -c "could not save the template" "$WORK/full.err")
    if [ $rc -eq 0 ] && [ "$out" = ok ] && [ "$warning" -eq 1 ]; then
        pass "full-cache: the run printed ok; stderr: $(grep "could not save" "$WORK/full.err")"
    else
        fail full-cache "exit $rc, stdout '$out', stderr: $(cat "$WORK/full.err")"
    fi
    [ -z "$(ls -A "$c/templates")" ] && pass "full-cache: nothing left in the templates directory" \
        || fail full-cache "left: $(ls -A "$c/templates")"
}

# The automatic template's memory file cut short: `kiln run` does not use it, makes it again
# (one boot), and the run after restores it.
case_damaged_auto() {
    local c=$WORK/damaged-auto out name
    private_cache "$c"
    KILN_CACHE_DIR=$c "$KILN" template create >"$WORK/auto.out" 2>/dev/null || { fail damaged-auto "cannot make the template"; return; }
    name=$(tail -1 "$WORK/auto.out")
    truncate -s 4096 "$name/memory"
    out=$(KILN_CACHE_DIR=$c "$KILN" run -- echo ok 2>"$WORK/auto.err")
    if [ "$out" = ok ] && grep -q "first run with this image" "$WORK/auto.err"; then
        pass "damaged-auto: the run made the template again: $(head -1 "$WORK/auto.err")"
    else
        fail damaged-auto "stdout '$out', stderr: $(cat "$WORK/auto.err")"
    fi
    out=$(KILN_CACHE_DIR=$c "$KILN" run -- echo ok 2>"$WORK/auto2.err")
    [ "$out" = ok ] && [ ! -s "$WORK/auto2.err" ] && pass "damaged-auto: the next run restored the new template" \
        || fail damaged-auto "second run: stdout '$out', stderr: $(cat "$WORK/auto2.err")"
}

# The VMM of a `kiln run --net` SIGKILLed while the command runs: one line, and no network
# namespace, veth or runtime directory of it left. Other sandboxes on the host may make links
# too: the links checked are those that appeared while this sandbox started and ran.
links() { ip -o link show | awk -F': ' '/kiln/ { sub(/@.*/, "", $2); print $2 }' | sort; }
case_net_vmm_killed() {
    local out=$WORK/net.out err=$WORK/net.err p vmm before during ours left
    before=$(links)
    "$KILN" run --net -- sh -c 'echo started; sleep 600' >"$out" 2>"$err" &
    p=$!
    wait_for "grep -qx started '$out'" 900 || { fail net-vmm-killed "the command never started: $(cat "$err")"; kill -KILL $p; return; }
    during=$(links)
    ours=$(comm -13 <(echo "$before") <(echo "$during") | tr '\n' ' ')
    vmm=$(cat /proc/$p/task/*/children 2>/dev/null | tr ' ' '\n' | grep . | head -1)
    [ -n "$vmm" ] || { fail net-vmm-killed "no VMM child"; kill -KILL $p; return; }
    kill -KILL "$vmm"
    wait $p
    local rc=$?
    local line="kiln: the sandbox's VM ended while the command ran: the VMM was killed by signal 9"
    if [ $rc -eq 1 ] && grep -qE -- "^$line(; last console lines:)?\$" "$err"; then
        pass "net-vmm-killed: exit $rc, '$line'"
    else
        fail net-vmm-killed "exit $rc: $(cat "$err")"
    fi
    left=""
    for l in $ours; do links | grep -qx "$l" && left+=" $l"; done
    [ -n "$ours" ] || echo "  (no new link seen while it ran)"
    [ -z "$left" ] && [ -z "$(leftovers "$p")" ] \
        && pass "net-vmm-killed: its links ($ours) are gone; no jail, cgroup or runtime directory left" \
        || fail net-vmm-killed "links left:$left; left: $(leftovers "$p")"
}

# The first kiln-vmm among the descendants of pid $1 (children from /proc/PID/task/*/children).
vmm_of() {
    local queue=("$1") q c
    while [ ${#queue[@]} -gt 0 ]; do
        q=${queue[0]}; queue=("${queue[@]:1}")
        for c in $(cat /proc/"$q"/task/*/children 2>/dev/null); do
            [ "$(cat /proc/"$c"/comm 2>/dev/null)" = kiln-vmm ] && { echo "$c"; return 0; }
            queue+=("$c")
        done
    done
    return 1
}
# Every descendant of pid $1, children before grandchildren.
descendants() {
    local c
    for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do echo "$c"; descendants "$c"; done
}
any_alive() { local p; for p; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
one_line() { [ -n "$1" ] && [ "$(printf '%s\n' "$1" | wc -l)" -eq 1 ]; }

# `kiln run --no-template` with its VMM SIGKILLed 5 s into the boot (a private cache): one line,
# non-zero, nothing left of it, nothing in the templates directory.
case_vmm_killed_booting() {
    local c=$WORK/vmm-killed-booting err=$WORK/booting.err p vmm rc
    private_cache "$c"
    KILN_CACHE_DIR=$c "$KILN" run --no-template -- echo ok >"$WORK/booting.out" 2>"$err" &
    p=$!
    wait_for "vmm=\$(vmm_of $p)" 120 || { fail vmm-killed-booting "no VMM child: $(cat "$err")"; kill -KILL $p; return; }
    sleep "${BOOT_KILL_AFTER:-5}"
    kill -KILL "$vmm"
    wait $p
    rc=$?
    local out
    out=$(cat "$err")
    if [ $rc -ne 0 ] && one_line "$out" && grep -q "killed by signal 9" "$err" && [ ! -s "$WORK/booting.out" ]; then
        pass "vmm-killed-booting: exit $rc, '$out'"
    else
        fail vmm-killed-booting "exit $rc, stdout '$(cat "$WORK/booting.out")', stderr: $out"
    fi
    [ -z "$(leftovers "$p")" ] && pass "vmm-killed-booting: no jail, cgroup or runtime directory of pid $p left" \
        || fail vmm-killed-booting "left: $(leftovers "$p")"
    [ -z "$(ls -A "$c/templates")" ] && pass "vmm-killed-booting: nothing in the templates directory" \
        || fail vmm-killed-booting "in the templates directory: $(ls -A "$c/templates")"
}

# `kiln run` restoring a template of /var/cache/kiln, its VMM SIGKILLed as soon as it exists
# (polled every 10 ms). From the automatic template (made first when missing) kiln run says in one
# line that the template did not start and boots instead (Run.swift's fallback), and the command
# runs; with --template NAME (the `default` template, made first when missing) there is no
# fallback: one line, non-zero. Neither template is changed, nothing is left, the next run restores.
kill_vmm_soon() { # PID: SIGKILLs its VMM once it exists; prints the VMM's pid and when
    local t0 vmm=""
    t0=$(now)
    until vmm=$(vmm_of "$1"); do
        kill -0 "$1" 2>/dev/null || return 1
        sleep 0.01
    done
    kill -KILL "$vmm"
    echo "VMM $vmm killed $(since "$t0") s after the start"
}
case_vmm_killed_restoring() {
    local err=$WORK/restoring.err p rc out t0 before line templates
    out=$("$KILN" run -- echo ok 2>"$WORK/restoring0.err")
    [ "$out" = ok ] || { fail vmm-killed-restoring "the first run: stdout '$out', stderr: $(cat "$WORK/restoring0.err")"; return; }
    [ -e "$CACHE/templates/default/state" ] || "$KILN" template create >/dev/null 2>&1 || { fail vmm-killed-restoring "cannot make the default template"; return; }
    templates=("$CACHE"/templates/default "$CACHE"/templates/auto-*)
    before=$(ls -lR --time-style=full-iso "${templates[@]}")
    "$KILN" run -- echo ok >"$WORK/restoring.out" 2>"$err" &
    p=$!
    kill_vmm_soon $p | sed 's/^/  automatic template: /'
    wait $p
    rc=$?
    out=$(cat "$err")
    line="^kiln: the template for this image did not start \(.*killed by signal 9.*\); booting instead\$"
    if [ $rc -eq 0 ] && [ "$(cat "$WORK/restoring.out")" = ok ] && one_line "$out" && grep -qE "$line" "$err"; then
        pass "vmm-killed-restoring (automatic): exit 0, ok after a boot; stderr '$out'"
    else
        fail "vmm-killed-restoring (automatic)" "exit $rc, stdout '$(cat "$WORK/restoring.out")', stderr: $out"
    fi
    [ -z "$(leftovers "$p")" ] && pass "vmm-killed-restoring (automatic): no jail, cgroup or runtime directory of pid $p left" \
        || fail "vmm-killed-restoring (automatic)" "left: $(leftovers "$p")"
    "$KILN" run --template default -- echo ok >"$WORK/restoring.out" 2>"$err" &
    p=$!
    kill_vmm_soon $p | sed 's/^/  --template default: /'
    wait $p
    rc=$?
    out=$(cat "$err")
    if [ $rc -ne 0 ] && [ ! -s "$WORK/restoring.out" ] && one_line "$out" && grep -q "killed by signal 9" "$err"; then
        pass "vmm-killed-restoring (--template): exit $rc, '$out'"
    else
        fail "vmm-killed-restoring (--template)" "exit $rc, stdout '$(cat "$WORK/restoring.out")', stderr: $out"
    fi
    [ -z "$(leftovers "$p")" ] && pass "vmm-killed-restoring (--template): no jail, cgroup or runtime directory of pid $p left" \
        || fail "vmm-killed-restoring (--template)" "left: $(leftovers "$p")"
    [ "$before" = "$(ls -lR --time-style=full-iso "${templates[@]}")" ] && pass "vmm-killed-restoring: the templates' files are unchanged" \
        || fail vmm-killed-restoring "the templates changed: $(diff <(echo "$before") <(ls -lR --time-style=full-iso "${templates[@]}") | head -5)"
    t0=$(now)
    out=$("$KILN" run -- echo ok 2>"$WORK/restoring2.err")
    [ "$out" = ok ] && [ ! -s "$WORK/restoring2.err" ] && pass "vmm-killed-restoring: the next run printed ok ($(since "$t0") s, restored)" \
        || fail vmm-killed-restoring "the next run: stdout '$out', stderr: $(cat "$WORK/restoring2.err")"
    t0=$(now)
    out=$("$KILN" run --template default -- echo ok 2>"$WORK/restoring2.err")
    [ "$out" = ok ] && [ ! -s "$WORK/restoring2.err" ] && pass "vmm-killed-restoring: the next --template default run printed ok ($(since "$t0") s)" \
        || fail vmm-killed-restoring "the next --template run: stdout '$out', stderr: $(cat "$WORK/restoring2.err")"
}

# `kiln serve` (private state directory, no warm pool, the `default` template): two sandboxes,
# the VMM of one SIGKILLed while its pause writes STATE/snapshots/ID.new. The pause answers an
# error, no snapshot is left, a resume does not restore a half snapshot, the other sandbox still
# runs a command (process.Process/Start, the Connect protocol's JSON envelopes).
serve_api() { # METHOD PATH [BODY]: prints the body, then the status on a last line
    curl -s -m 600 -X "$1" -H "X-API-KEY: $KEY" -H 'content-type: application/json' ${3:+-d "$3"} -w '\n%{http_code}' "$URL$2"
}
serve_exec() { # ID TOKEN: runs `echo ok` as root through envd; prints the stream
    local msg='{"process":{"cmd":"/bin/echo","args":["ok"],"cwd":"/"}}'
    local n=${#msg}
    { printf '\x00'; printf "$(printf '\\x%02x' $((n >> 24)) $((n >> 16 & 255)) $((n >> 8 & 255)) $((n & 255)))"
      printf '%s' "$msg"; } >"$WORK/start.bin"
    curl -s -m 120 -X POST -H "E2b-Sandbox-Id: $1" -H "X-Access-Token: $2" -H 'content-type: application/connect+json' \
        -H "Authorization: Basic $(printf 'root:' | base64)" --data-binary @"$WORK/start.bin" "$URL/process.Process/Start" | tr -c '[:print:]' ' '
}
serve_vmm() { # ID: the pid in its runtime directory's sandbox.record (u32 after a 5-byte magic)
    local dir
    dir=$(jq -r .runtimeDirectory "$STATE/sandboxes/$1.json" 2>/dev/null)
    [ -n "$dir" ] && [ "$dir" != null ] && od -An -tu4 -j5 -N4 "$dir/sandbox.record" 2>/dev/null | tr -d ' '
}
case_serve_vmm_killed_pausing() {
    STATE=$WORK/serve-state
    local log=$WORK/serve.log s a b ta tb va vb r code body left t0
    mkdir -p "$STATE"
    "$KILN" serve --listen 127.0.0.1:0 --state-dir "$STATE" --warm 0 >"$log" 2>&1 &
    s=$!
    wait_for "grep -q 'listening on http' '$log'" 300 || { fail serve-vmm-killed-pausing "the service did not start: $(cat "$log")"; kill -KILL $s; return; }
    URL=$(grep -o 'listening on http://[0-9.:]*' "$log" | sed 's/listening on //')
    KEY=$(cat "$STATE/api-key")
    echo "  service $s at $URL"
    r=$(serve_api POST /sandboxes '{"templateID":"default","timeout":900}'); a=$(sed '$d' <<<"$r" | jq -r .sandboxID); ta=$(sed '$d' <<<"$r" | jq -r .envdAccessToken)
    r=$(serve_api POST /sandboxes '{"templateID":"default","timeout":900}'); b=$(sed '$d' <<<"$r" | jq -r .sandboxID); tb=$(sed '$d' <<<"$r" | jq -r .envdAccessToken)
    va=$(serve_vmm "$a"); vb=$(serve_vmm "$b")
    if [ -z "$va" ] || [ -z "$vb" ] || [ "$a" = null ] || [ "$b" = null ]; then
        fail serve-vmm-killed-pausing "cannot create two sandboxes (last answer: $r): $(tail -5 "$log")"
    else
        echo "  sandboxes $a (VMM $va) and $b (VMM $vb)"
        t0=$(now)
        serve_api POST "/sandboxes/$a/pause" >"$WORK/pause.out" &
        r=$!
        if wait_for "[ -d '$STATE/snapshots/$a.new' ]" 120; then
            kill -KILL "$va"
            echo "  VMM $va killed $(since "$t0") s after the pause request, with $(ls -A "$STATE/snapshots/$a.new" | tr '\n' ' ')in $a.new"
        else
            echo "  no $a.new seen"
        fi
        wait $r
        code=$(tail -1 "$WORK/pause.out"); body=$(sed '$d' "$WORK/pause.out")
        [ "$code" != 204 ] && one_line "$body" && pass "serve-vmm-killed-pausing: the pause answered $code $body" \
            || fail serve-vmm-killed-pausing "the pause answered $code $body"
        left=$(ls -A "$STATE/snapshots")
        [ -z "$left" ] && pass "serve-vmm-killed-pausing: nothing in STATE/snapshots" \
            || fail serve-vmm-killed-pausing "in STATE/snapshots: $left"
        # Its VM is gone: it should no longer be listed as running, and a resume should not say it runs.
        local state ea
        kill -0 "$va" 2>/dev/null && echo "  (VMM $va still alive)"
        r=$(serve_api GET "/sandboxes/$a"); code=$(tail -1 <<<"$r"); state=$(sed '$d' <<<"$r" | jq -r .state 2>/dev/null)
        [ "$code" = 404 ] || [ "$state" != running ] && pass "serve-vmm-killed-pausing: GET /sandboxes/$a answered $code, state '$state'" \
            || fail serve-vmm-killed-pausing "its VMM is dead, yet GET /sandboxes/$a answers $code with state '$state'"
        r=$(serve_api POST "/sandboxes/$a/resume" '{"timeout":60}'); code=$(tail -1 <<<"$r"); body=$(sed '$d' <<<"$r")
        if [ "$code" -ge 400 ] && one_line "$body" && ! grep -q "already running" <<<"$body"; then
            pass "serve-vmm-killed-pausing: the resume answered $code $body"
        else
            fail serve-vmm-killed-pausing "the resume of the sandbox whose VMM died answered $code $body"
        fi
        r=$(serve_api POST "/sandboxes/$a/connect" '{"timeout":60}'); echo "  POST /sandboxes/$a/connect (the SDK's connect): $(tail -1 <<<"$r") $(sed '$d' <<<"$r" | head -c 120)"
        ea=$(serve_exec "$a" "$ta")
        echo "  a command in $a: $ea"
        kill -0 "$vb" 2>/dev/null && [ "$(cat /proc/$vb/comm 2>/dev/null)" = kiln-vmm ] || fail serve-vmm-killed-pausing "the other sandbox's VMM $vb is gone"
        r=$(serve_exec "$b" "$tb")
        grep -q '"data":{"stdout":"b2sK"}' <<<"$r" && grep -q '"exitCode":0' <<<"$r" \
            && pass "serve-vmm-killed-pausing: the other sandbox ($b) ran echo ok" \
            || fail serve-vmm-killed-pausing "the other sandbox's command: $r"
        r=$(serve_api GET "/sandboxes/$b"); echo "  GET /sandboxes/$b: $(tail -1 <<<"$r") $(sed '$d' <<<"$r" | jq -c '{state}' 2>/dev/null)"
        serve_api DELETE "/sandboxes/$b" >/dev/null
        serve_api DELETE "/sandboxes/$a" >/dev/null
    fi
    local all
    all=$(descendants $s | tr '\n' ' ')
    kill -TERM $s; wait_for "! kill -0 $s 2>/dev/null" 60 || kill -KILL $s
    wait $s 2>/dev/null
    # The launcher exits when the service's end of its socket closes: a moment after the service.
    wait_for "! any_alive $all" 10
    left=""
    for p in $all $va $vb; do kill -0 "$p" 2>/dev/null && { left+=" $p($(cat /proc/$p/comm 2>/dev/null))"; kill -KILL "$p"; }; done
    [ -z "$left" ] && [ -z "$(ls -A "$STATE/vms" 2>/dev/null)" ] && pass "serve-vmm-killed-pausing: no process of the service, no VM directory left" \
        || fail serve-vmm-killed-pausing "left (killed now):$left; STATE/vms: $(ls -A "$STATE/vms" 2>/dev/null)"
    echo "  service log: $(grep -v 'generated API key' "$log" | tail -8)"
}

# `kiln boot --control` asked to snapshot into a full 8 MiB tmpfs: one error line, no usable
# snapshot there, the VM runs on (status, then a snapshot into a roomy directory), nothing left.
control() { # SOCKET LINE: one reply line
    python3 -c 'import socket,sys
s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall((sys.argv[2]+"\n").encode()); f=s.makefile()
print(f.readline().rstrip("\n"))' "$1" "$2"
}
case_control_snapshot_full() {
    local m=$WORK/full8 sock=$WORK/control.sock p r rc
    mkdir -p "$m"
    mount -t tmpfs -o size=8m kiln-chaos "$m" || { fail control-snapshot-full "cannot mount a tmpfs"; return; }
    MOUNTED+=("$m")
    "$KILN" boot --headless --control "$sock" >"$WORK/boot.out" 2>"$WORK/boot.err" </dev/null &
    p=$!
    wait_for "[ -S '$sock' ]" 120 || { fail control-snapshot-full "no control socket: $(cat "$WORK/boot.err")"; kill -KILL $p; return; }
    sleep 5
    r=$(control "$sock" "snapshot $m/snap")
    if [[ $r == error:* ]] && one_line "$r"; then pass "control-snapshot-full: '$r'"; else fail control-snapshot-full "the snapshot answered '$r'"; fi
    # The failed snapshot's files go with it (a partial memory file kept the disk full).
    [ -z "$(ls -A "$m/snap" 2>/dev/null)" ] && pass "control-snapshot-full: nothing of the failed snapshot in DIR ($(df -k --output=used "$m" | tail -1 | tr -d ' ') KiB of the tmpfs used)" \
        || fail control-snapshot-full "left in DIR: $(cd "$m/snap" && for f in *; do echo "$f ($(stat -c %s "$f") bytes, $(du -k "$f" | cut -f1) KiB used)"; done | tr '\n' ' ')"
    r=$(timeout 60 "$KILN" restore "$m/snap" </dev/null 2>&1 | tail -3); echo "  kiln restore of it: $r"
    r=$(control "$sock" status)
    [ "$r" = "ok running" ] && pass "control-snapshot-full: status then: $r" || fail control-snapshot-full "status: '$r'"
    r=$(control "$sock" "snapshot $WORK/snap2")
    [[ $r == ok* ]] && [ -e "$WORK/snap2/state" ] && pass "control-snapshot-full: a snapshot into a roomy directory: $r" \
        || fail control-snapshot-full "the second snapshot: '$r'"
    kill -0 $p 2>/dev/null && [ "$(control "$sock" status)" = "ok running" ] || fail control-snapshot-full "the VM ended: $(cat "$WORK/boot.err")"
    kill -TERM $p
    wait_for "! kill -0 $p 2>/dev/null" 60 || { echo "  kiln boot ignored SIGTERM"; kill -KILL $p; }
    wait $p
    rc=$?
    echo "  kiln boot exit $rc: $(tail -1 "$WORK/boot.err")"
    [ -z "$(leftovers "$p")" ] && [ ! -e "$sock" ] && pass "control-snapshot-full: no jail, cgroup, runtime directory or socket of pid $p left" \
        || fail control-snapshot-full "left: $(leftovers "$p") $(ls "$sock" 2>/dev/null)"
}

[ "$(id -u)" -eq 0 ] || { echo "chaos.sh needs root (the jail)" >&2; exit 2; }
killed=""
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(create-killed full-cache damaged-auto net-vmm-killed vmm-killed-booting vmm-killed-restoring
                                    serve-vmm-killed-pausing control-snapshot-full)
for c in "${cases[@]}"; do
    t0=$(now)
    "case_${c//-/_}"
    echo "  ($c took $(since "$t0") s)"
done
echo "chaos: $passed passed, $failed failed"
[ $failed -eq 0 ]
