#!/usr/bin/env bash
# An Alpine-like image, for the end-to-end tests (Tests/KilnTests/OCIRunTests.swift), built offline:
#   Tests/images/make-musl-image.sh OUT   -> last stdout line: OUT/oci, an OCI layout with the tag musl:
#     /bin/busybox (static) and /bin/sh -> busybox, musl's loader /lib/ld-musl-x86_64.so.1 (which is
#     its libc), and /usr/bin/hello-musl, a C program linked dynamically against it (musl-gcc),
#     printing "hello from musl (musl libc)".
# Needs Debian's musl-tools (Scripts/setup.sh installs it).
set -euo pipefail
out=${1:?OUT directory}
mkdir -p "$out"; out=$(cd "$out" && pwd)
command -v musl-gcc >/dev/null || { echo "make-musl-image.sh: musl-gcc missing (apt-get install musl-tools)" >&2; exit 1; }
layout=$out/oci
rm -rf "$layout" "$out/bundle-musl"
umoci init --layout "$layout"
umoci new --image "$layout:musl"
umoci unpack --image "$layout:musl" "$out/bundle-musl" >/dev/null
root=$out/bundle-musl/rootfs
mkdir -p "$root/bin" "$root/lib" "$root/usr/bin"
cp /bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
cp -L /lib/ld-musl-x86_64.so.1 "$root/lib/ld-musl-x86_64.so.1"
# gnu_get_libc_version does not exist in musl: the program says which libc ran it by a symbol
# only musl's loader resolves, so that a glibc binary could not pass for it.
cat > "$out/hello.c" <<'C'
#include <stdio.h>
#include <dlfcn.h>
int main(void) {
    printf("hello from musl (%s libc)\n", dlsym(RTLD_DEFAULT, "gnu_get_libc_version") ? "glibc" : "musl");
    return 0;
}
C
musl-gcc -O2 -o "$root/usr/bin/hello-musl" "$out/hello.c"
umoci repack --image "$layout:musl" "$out/bundle-musl" >/dev/null
rm -rf "$out/bundle-musl" "$out/hello.c"
umoci config --image "$layout:musl" --os linux --architecture amd64 --config.env PATH=/usr/bin:/bin --config.cmd /bin/sh
echo "$layout"
