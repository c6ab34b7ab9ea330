#!/usr/bin/env bash
# Network egress (issue 15; docs/benchmarks.md "Network egress"): connection setup and throughput
# to a fake-internet host through the raw TAP of `kiln boot --net`, Kiln's NAT (`kiln run --net`)
# and its egress proxy (`--allow-out NAME`), in the same run; kiln-egress's CPU per GiB moved by a
# host process, against a plain copying relay; one sandbox's UDP flood against another's
# throughput. Root; traffic only to namespaces this run makes (198.19.200.0/30, 198.19.201.0/24).
#   Benchmarks/net-egress.sh [net-egress.py options, e.g. --rounds 1 --parts paths]
# Environment: KILN (default .build/release/kiln, built if missing; kiln-vmm and kiln-egress are
# found beside it), KILN_KERNEL / KILN_INITRD (the base initramfs for the raw TAP's guest).
# About 10 minutes here (guest TCP is emulated: keep --kib small).
set -euo pipefail
cd "$(dirname "$0")/.."

kiln=${KILN:-.build/release/kiln}
if [[ ! -x $kiln ]]; then
    echo "net-egress.sh: building kiln, kiln-vmm, kiln-egress (release)" >&2
    for product in kiln kiln-vmm kiln-egress; do swift build -c release -j 2 --product $product 2>&1 | tail -1 >&2; done
fi
[[ $(id -u) == 0 ]] || { echo "net-egress.sh: needs root (namespaces, a TAP, nftables)" >&2; exit 1; }
kernel=${KILN_KERNEL:-/var/cache/kiln/kernel/vmlinux}
initrd=${KILN_INITRD:-/var/cache/kiln/initramfs/initramfs.cpio}
tag=$(( $$ % 100000 ))
work=$(mktemp -d)
cleanup() {
    # net-egress.py removes what it made; this is for when it was killed before it could.
    nft delete table ip "kiln-netbench-$tag" 2>/dev/null || true
    ip link del "kbt$tag" 2>/dev/null || true
    ip link del "kbe$tag" 2>/dev/null || true
    ip netns del "kiln-netbench-inet-$tag" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
# /bin/netio in the raw TAP's initramfs, and the same source built the same way for kiln run's guests.
initrd=$(rootfs/build-bench-initramfs.sh "$initrd" "$work/bench.cpio")
gcc -static -O2 -s -Wall -o "$work/netio" rootfs/netio.c
echo "net-egress.sh: kiln $kiln, kernel $kernel; load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 Benchmarks/net-egress.py --kiln "$kiln" --kernel "$kernel" --initrd "$initrd" --netio "$work/netio" --tag "$tag" "$@"
