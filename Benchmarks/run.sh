#!/usr/bin/env bash
# Kiln boot benchmark: Kiln vs QEMU microvm. See docs/benchmarks.md.
#   Benchmarks/run.sh [boot.py options, e.g. --runs 1]
# Environment: KILN_KERNEL / KILN_INITRD use these images instead of Kiln's default ones.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "run.sh: building kiln (release)" >&2
swift build -c release --product kiln 2>&1 | tail -3 >&2
swift build -c release --product kiln-vmm 2>&1 | tail -3 >&2

if ! command -v qemu-system-x86_64 >/dev/null; then
    echo "run.sh: installing qemu-system-x86" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y qemu-system-x86 >&2
fi

# Kiln's default images: the build scripts print the (cached) path on their last stdout line.
# If a script fails (e.g. Kernels/ is mid-edit), the last cached image is used instead.
image() {  # image SCRIPT CACHED-SYMLINK
    local out=""
    if [[ -x $1 ]]; then out=$("$1" | tail -1) || out=""; fi
    if [[ -z $out && -e $2 ]]; then
        echo "run.sh: using the cached $2" >&2
        out=$(readlink -f "$2")
    fi
    [[ -n $out ]] || { echo "run.sh: no image from $1 or $2" >&2; exit 1; }
    echo "$out"
}
kernel=${KILN_KERNEL:-$(image Kernels/build.sh /var/cache/kiln/kernel/vmlinux)}
initrd=${KILN_INITRD:-$(image rootfs/build-initramfs.sh /var/cache/kiln/initramfs/initramfs.cpio)}
echo "run.sh: kernel $kernel, initramfs $initrd; load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

exec python3 Benchmarks/boot.py --kiln .build/release/kiln --kernel "$kernel" --initrd "$initrd" "$@"
