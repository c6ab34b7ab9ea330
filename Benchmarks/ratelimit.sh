#!/usr/bin/env bash
# Rate limiter accuracy (docs/net.md "Rate limits", docs/benchmarks.md "Rate limits"): Kiln's guest
# reads and writes a rate-limited disk and moves data over a rate-limited NIC, measured as
# Benchmarks/devices.py measures them (one boot each, Kiln only), against the limits.
#   Benchmarks/ratelimit.sh            # ~6 minutes here: three boots
# Environment: KILN (default .build/release/kiln, built if missing), DISK_RATE (bytes/s, default
# 65536), DISK_MIB (per sequential test, default 1), DISK_OPS (requests/s, default 10), NET_RATE
# (bytes/s each direction, default 16384), NET_KIB (KiB per transfer, default 256), KILN_KERNEL /
# KILN_INITRD. The NIC test needs root (a network namespace and a TAP).
# The limits must be well below what the guest reaches unlimited at the time (its kernel is
# emulated here: ~0.8 MiB/s, ~80 reads/s, ~200 KiB/s idle, a third of that under a load of 4),
# or the guest, not the limit, is measured.
set -euo pipefail
cd "$(dirname "$0")/.."

kiln=${KILN:-.build/release/kiln}
if [[ ! -x $kiln ]]; then
    echo "ratelimit.sh: building kiln (release)" >&2
    swift build -c release -j 2 --product kiln 2>&1 | tail -1 >&2
    swift build -c release -j 2 --product kiln-vmm 2>&1 | tail -1 >&2
fi
disk_rate=${DISK_RATE:-65536} disk_mib=${DISK_MIB:-1} disk_ops=${DISK_OPS:-10} net_rate=${NET_RATE:-16384} net_kib=${NET_KIB:-256}
kernel=${KILN_KERNEL:-/var/cache/kiln/kernel/vmlinux}
initrd=${KILN_INITRD:-/var/cache/kiln/initramfs/initramfs.cpio}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
initrd=$(rootfs/build-bench-initramfs.sh "$initrd" "$work/bench.cpio")
stamp=$(date +%Y-%m-%d-%H%M)
mkdir -p Benchmarks/results
common=(--kiln "$kiln" --kernel "$kernel" --initrd "$initrd" --only kiln --runs 1)
echo "ratelimit.sh: disk $disk_rate B/s, disk $disk_ops requests/s, NIC $net_rate B/s; load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 Benchmarks/devices.py "${common[@]}" --mib "$disk_mib" --count4k $((disk_mib * 256)) --kiln-disk-options "rate=$disk_rate" \
    --json "Benchmarks/results/ratelimit-$stamp-disk-bytes.json" >&2
python3 Benchmarks/devices.py "${common[@]}" --mib "$disk_mib" --count4k 128 --kiln-disk-options "ops=$disk_ops" \
    --json "Benchmarks/results/ratelimit-$stamp-disk-ops.json" >&2
python3 Benchmarks/devices.py "${common[@]}" --device net --kib "$net_kib" --kiln-net-options "rate=$net_rate" \
    --json "Benchmarks/results/ratelimit-$stamp-net.json" >&2

# A bucket starts full (one second of its rate), so the first second's worth passes at once: the
# limit governs the rest, (amount - bucket) / time. Both rates are printed.
python3 - "$stamp" "$disk_rate" "$disk_ops" "$net_rate" <<'PY'
import json, sys
stamp, disk_rate, disk_ops, net_rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def load(kind):
    return json.load(open(f"Benchmarks/results/ratelimit-{stamp}-{kind}.json"))["runs"][0]
print("| limit | test | amount | time (s) | raw rate | after the first bucket | of the limit |")
print("|---|---|---:|---:|---:|---:|---:|")
def row(limit_text, test, amount, unit, seconds, limit):
    if not seconds:
        print(f"| {limit_text} | {test} | {amount} {unit} | - | - | - | - |"); return
    after = (amount - limit) / seconds
    print(f"| {limit_text} | {test} | {amount} {unit} | {seconds:.2f} | {amount / seconds:.0f} {unit}/s "
          f"| {after:.0f} {unit}/s | {100 * after / limit:.1f} % |")
r = load("disk-bytes")
for name, t in r["tests"].items():
    row(f"disk {disk_rate} B/s", name, t["bytes"], "B", t["guest_s"], disk_rate)
r = load("disk-ops")
for name in ("read4k", "rand4k"):
    t = r["tests"].get(name)
    if t: row(f"disk {disk_ops} requests/s", name, t["bytes"] // 4096, "requests", t["guest_s"], disk_ops)
r = load("net")
for name, t in r.get("tests", {}).items():
    if isinstance(t, dict) and t.get("bytes") and t.get("seconds"):
        row(f"NIC {net_rate} B/s", name, t["bytes"], "B", t["seconds"], net_rate)
PY
