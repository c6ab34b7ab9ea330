#!/usr/bin/env bash
# Kiln device benchmark (guest-level virtio-blk, or virtio-net with --device net): Kiln vs QEMU microvm.
# See docs/benchmarks.md. --device net needs root (network namespace + TAP).
#   Benchmarks/devices.sh [devices.py options, e.g. --runs 1]
# Environment: KILN_KERNEL / KILN_INITRD use these images instead of the cached default ones.
set -euo pipefail
cd "$(dirname "$0")/.."

# Always (incremental, seconds when current): a stale binary would be measured under today's commit.
echo "devices.sh: building kiln (release)" >&2
swift build -c release -j 2 --product kiln 2>&1 | tail -1 >&2
swift build -c release -j 2 --product kiln-vmm 2>&1 | tail -1 >&2
command -v qemu-system-x86_64 >/dev/null || { echo "devices.sh: qemu-system-x86_64 missing (apt-get install qemu-system-x86)" >&2; exit 1; }

kernel=${KILN_KERNEL:-/var/cache/kiln/kernel/vmlinux}
initrd=${KILN_INITRD:-/var/cache/kiln/initramfs/initramfs.cpio}
# The tests need /bin/randread and /bin/netio in the guest: the same initramfs with them appended.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
initrd=$(rootfs/build-bench-initramfs.sh "$initrd" "$work/bench.cpio")
echo "devices.sh: kernel $kernel, initramfs $initrd; load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 Benchmarks/devices.py --kiln .build/release/kiln --kernel "$kernel" --initrd "$initrd" "$@"
