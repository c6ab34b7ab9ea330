#!/usr/bin/env bash
# Build Kiln's default initramfs: an UNCOMPRESSED newc cpio with Debian's
# static busybox, a few applet links and rootfs/init as /init.
#
#   rootfs/build-initramfs.sh   -> last stdout line: absolute path of the cpio
#
# Cached at ${KILN_CACHE_DIR:-/var/cache/kiln}/initramfs/<key>/initramfs.cpio,
# <key> = short sha256 of (busybox-static version, rootfs/init, this script).
# The archive is reproducible: fixed owner 0:0 and mtime 0.
set -euo pipefail

exec 3>&1 1>&2          # stdout is reserved for the final path

log() { echo "kiln: $*" >&2; }
die() { log "error: $*"; exit 1; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
INIT=$HERE/init
CACHE_ROOT=${KILN_CACHE_DIR:-/var/cache/kiln}
mkdir -p "$CACHE_ROOT/initramfs"
CACHE=$(cd "$CACHE_ROOT/initramfs" && pwd)
BUSYBOX=/bin/busybox

# Applets that /init and a basic interactive shell need.
APPLETS=(sh ash cttyhack setsid mount umount echo printf cat ls mkdir rmdir rm
         cp mv ln touch sleep sync reboot poweroff halt uname true false test '['
         dmesg ps kill grep head tail wc stat mknod chmod hostname ip ifconfig
         env date clear stty)

for p in busybox-static python3; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        log "installing $p"
        [[ $(id -u) == 0 ]] || die "$p missing; run as root or install it"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null \
            || die "apt-get install $p failed"
    fi
done
file_is_static() { ! LC_ALL=C readelf -l "$1" 2>/dev/null | grep -q INTERP; }
file_is_static "$BUSYBOX" || die "$BUSYBOX is not statically linked (is busybox-static installed?)"

BB_VER=$(dpkg-query -W -f='${Version}' busybox-static)
KEY=$(
    { echo "busybox-static $BB_VER"; sha256sum <"$BUSYBOX"
      echo "init"; cat "$INIT"; echo "script"; cat "${BASH_SOURCE[0]}"; } | sha256sum | cut -c1-16
)
OUT_DIR=$CACHE/$KEY
OUT=$OUT_DIR/initramfs.cpio

link_latest() {
    ln -sfn "$KEY/initramfs.cpio" "$CACHE/.initramfs.tmp.$$"
    mv -Tf "$CACHE/.initramfs.tmp.$$" "$CACHE/initramfs.cpio"
}

if [[ ! -f $OUT ]]; then
    log "building initramfs $KEY (busybox $BB_VER)"
    for a in "${APPLETS[@]}"; do
        "$BUSYBOX" --list | grep -qxF -- "$a" || die "busybox has no applet '$a'"
    done
    mkdir -p "$OUT_DIR"
    tmp=$OUT_DIR/.initramfs.cpio.tmp.$$
    trap 'rm -f "$tmp"' EXIT
    # A small newc writer of our own: no staging directory, no root needed
    # for the device node, deterministic output.
    python3 - "$tmp" "$BUSYBOX" "$INIT" "${APPLETS[@]}" <<'PY'
import os, stat, sys

out, busybox, init, applets = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
ino = [720000]

def entry(f, name, mode, data=b"", rdev=(0, 0), nlink=1):
    ino[0] += 1
    name_b = name.encode() + b"\0"
    fields = [ino[0], mode, 0, 0, nlink, 0, len(data), 0, 0,
              rdev[0], rdev[1], len(name_b), 0]
    hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
    f.write(hdr + name_b)
    f.write(b"\0" * (-(len(hdr) + len(name_b)) % 4))
    f.write(data)
    f.write(b"\0" * (-len(data) % 4))

D, F, L, C = stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK, stat.S_IFCHR
with open(out, "wb") as f:
    for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc",
              "sys", "tmp", "root", "etc", "mnt", "run"):
        entry(f, d, D | (0o1777 if d == "tmp" else 0o755), nlink=2)
    # stdio for /init before devtmpfs is mounted
    entry(f, "dev/console", C | 0o600, rdev=(5, 1))
    entry(f, "dev/null", C | 0o666, rdev=(1, 3))
    entry(f, "bin/busybox", F | 0o755, open(busybox, "rb").read())
    for a in applets:
        entry(f, "bin/" + a, L | 0o777, b"busybox")
    entry(f, "init", F | 0o755, open(init, "rb").read())
    entry(f, "etc/hostname", F | 0o644, b"kiln\n")
    # read by `mount -a` in /init
    entry(f, "etc/fstab", F | 0o644,
          b"proc /proc proc nosuid,nodev,noexec 0 0\n"
          b"sysfs /sys sysfs nosuid,nodev,noexec 0 0\n"
          b"devtmpfs /dev devtmpfs nosuid,mode=0755 0 0\n")
    entry(f, "TRAILER!!!", 0, nlink=1)
    # pad to a 512-byte multiple like cpio(1)
    f.write(b"\0" * (-f.tell() % 512))
PY
    mv -f "$tmp" "$OUT"
    trap - EXIT
    log "initramfs $KEY: $OUT ($(stat -c %s "$OUT") bytes)"
else
    log "cached initramfs $KEY"
fi
link_latest
echo "$OUT" >&3
