#!/usr/bin/env bash
# Builds the initramfs for Kiln's vsock integration test: the default initramfs with a second
# newc archive appended that adds /bin/vsock-test (Linux unpacks concatenated archives in order).
# Usage: build-vsock-test-initramfs.sh BASE.cpio OUT.cpio   (prints OUT on success)
set -euo pipefail
base=$1 out=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root/bin"
gcc -static -O2 -s -o "$work/root/bin/vsock-test" "$here/vsock-test.c"
# The base archive must end on a 4-byte boundary for the next header; newc trailers are padded to 512.
cp "$base" "$work/out.cpio"
(cd "$work/root" && printf 'bin\nbin/vsock-test\n' | cpio -o -H newc --owner 0:0 --quiet) >> "$work/out.cpio"
mv "$work/out.cpio" "$out"
echo "$out"
