#!/usr/bin/env bash
# How much host memory an idle sandbox restored from the default template costs, measured as
# the drop in MemAvailable with N of them running `sleep` (docs/benchmarks.md, "Templates").
# Pss/Rss count kiln run's process and, as root, its jailed VMM process.
#   Benchmarks/clones.sh [N]        (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10}
kiln=.build/release/kiln
[[ -x $kiln && -x ${kiln}-vmm ]] || { swift build -c release -j 2 --product kiln >&2 && swift build -c release -j 2 --product kiln-vmm >&2; }
$kiln template create >/dev/null
sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true
avail() { awk '/MemAvailable/ {print $2}' /proc/meminfo; }
before=$(avail)
dir=$(mktemp -d)
pids=()
for i in $(seq "$n"); do
    KILN_BOOT_TRACE=1 $kiln run -- sleep 600 2>"$dir/$i.trace" &
    pids+=($!)
done
# Wait until every clone's command started (or 120 s).
for _ in $(seq 240); do
    started=$( (grep -l command-started "$dir"/*.trace 2>/dev/null || true) | wc -l)
    [[ $started -ge $n ]] && break
    sleep 0.5
done
sleep 2
after=$(avail)
# As root each clone is two processes: kiln run (the supervisor) and its jailed VMM (kiln-vmm).
sum() {  # sum FIELD PID...: the smaps_rollup field over the given processes, in KiB
    local field=$1 total=0 r; shift
    for p in "$@"; do r=$(awk -v f="^$field:" '$0 ~ f {print $2}' /proc/$p/smaps_rollup 2>/dev/null || echo 0); total=$((total + ${r:-0})); done
    echo $total
}
vmms=()
for p in "${pids[@]}"; do for c in $(pgrep -P "$p" || true); do vmms+=("$c"); done; done
rss=$(sum Rss "${pids[@]}" "${vmms[@]}")
pss=$(sum Pss "${pids[@]}" "${vmms[@]}")
sup_pss=$(sum Pss "${pids[@]}")
kill "${pids[@]}" 2>/dev/null || true
wait 2>/dev/null || true
rm -rf "$dir"
per=$(( (before - after) / n ))
total=$(awk '/MemTotal/ {print $2}' /proc/meminfo)
echo "| idle clones running \`sleep\` | $started of $n started |"
echo "|---|---:|"
echo "| MemAvailable drop per clone | $((per / 1024)) MiB |"
echo "| Pss per clone (smaps_rollup, shared pages split) | $((pss / n / 1024)) MiB |"
echo "| Rss per clone | $((rss / n / 1024)) MiB |"
echo "| of the Pss, the kiln run supervisor ($(( ${#vmms[@]} )) jailed VMM processes) | $((sup_pss / n / 1024)) MiB |"
echo "| clones that would fit in MemTotal ($((total / 1024 / 1024)) GiB) at that cost | $(( total / (per > 0 ? per : 1) )) |"
