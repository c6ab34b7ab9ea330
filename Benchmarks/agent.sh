#!/usr/bin/env bash
# Agent and template benchmarks (docs/benchmarks.md, "Agent, kiln run and templates"):
#   1. kiln-bench agent: the agent protocol on the host (kiln-agent on a Unix socket)
#   2. kiln run -- true: cold boot (--no-template) vs restored from the default template,
#      with the trace breakdown (KILN_BOOT_TRACE); as root also --no-jail (VMM in-process)
#   3. kiln-bench vm: ping, exec and throughput through a booted sandbox
#   Benchmarks/agent.sh [RUNS]      (default 5 template runs, 2 cold runs)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
echo "agent.sh: building (release)" >&2
swift build -c release -j 2 --product kiln >&2
swift build -c release -j 2 --product kiln-vmm >&2
swift build -c release -j 2 --product kiln-agent >&2
swift build -c release -j 2 --product kiln-bench >&2
rootfs/build-image.sh .build/release/kiln-agent >/dev/null
kiln=.build/release/kiln
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
.build/release/kiln-bench agent
echo
$kiln template create >/dev/null

trace_run() {  # prints: total_ms first_kvm_run agent_ready command_started command_exited (ms from process start)
    local t0 t1
    t0=$(date +%s%N)
    KILN_BOOT_TRACE=1 "$kiln" run "$@" -- true 2>/tmp/kiln-agent-bench.trace
    t1=$(date +%s%N)
    python3 - "$(( (t1 - t0) / 1000000 ))" <<'PY'
import sys
ev = {}
for line in open('/tmp/kiln-agent-bench.trace'):
    p = line.split()
    if len(p) == 3 and p[0] == 'kiln-trace:': ev.setdefault(p[1], int(p[2]))
t0 = ev['process-start']
ms = lambda k: '%.0f' % ((ev[k] - t0) / 1e6) if k in ev else '-'
print(sys.argv[1], ms('first-kvm-run'), ms('agent-ready'), ms('command-started'), ms('command-exited'))
PY
}

echo "| kiln run -- true | total ms | first KVM_RUN ms | agent ready ms | command started ms | command exited ms |"
echo "|---|---:|---:|---:|---:|---:|"
for i in $(seq 2); do echo "| cold boot (--no-template) #$i | $(trace_run --no-template | tr ' ' '|') |"; done
for i in $(seq "$runs"); do
    echo "| from the template #$i | $(trace_run | tr ' ' '|') |"
    # As root the VMM is a jailed process whose trace goes to its console log: first KVM_RUN
    # shows only in-process (--no-jail), which also gives the jail's cost by difference.
    [ "$(id -u)" = 0 ] && echo "| from the template, --no-jail #$i | $(trace_run --no-jail 2>/dev/null | tr ' ' '|') |"
done
echo
.build/release/kiln-bench vm
