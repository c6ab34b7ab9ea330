#!/usr/bin/env bash
# Builds the initramfs for the guest-level device benchmark (Benchmarks/devices.py): the default
# initramfs with a second newc archive appended that adds /bin/randread (random-offset 4 KiB
# O_DIRECT reads; the guest has no fio) and /bin/netio (a TCP client with 64 KiB reads and writes).
# Linux unpacks concatenated archives in order.
# Usage: build-bench-initramfs.sh BASE.cpio OUT.cpio   (prints OUT on success)
set -euo pipefail
base=$1 out=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
command -v gcc >/dev/null || { echo "build-bench-initramfs.sh: gcc missing (apt-get install gcc libc6-dev)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root/bin"
for tool in randread netio; do
    gcc -static -O2 -s -Wall -o "$work/root/bin/$tool" "$here/$tool.c"
done
# The base archive must end on a 4-byte boundary for the next header; newc trailers are padded to 512.
cp "$base" "$work/out.cpio"
(cd "$work/root" && printf 'bin\nbin/randread\nbin/netio\n' | cpio -o -H newc --owner 0:0 --quiet) >> "$work/out.cpio"
mv "$work/out.cpio" "$out"
echo "$out"
