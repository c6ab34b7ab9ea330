#!/usr/bin/env bash
# Build Kiln's default sandbox image: an ext4 root filesystem with Debian's static busybox
# (every applet linked) and kiln-agent as /sbin/kiln-agent, the guest's PID 1.
#
#   rootfs/build-image.sh [AGENT]   -> last stdout line: absolute path of the image
#
# AGENT is a static kiln-agent binary; default: `swift build -c release --product kiln-agent`.
# Cached at ${KILN_CACHE_DIR:-/var/cache/kiln}/images/<key>/default.ext4, <key> = short sha256
# of (agent binary, busybox version, this script); images/default.ext4 links to the latest.
# The sandbox sees the image read-only: writes go to a per-sandbox layer (docs/agent-protocol.md).
set -euo pipefail

exec 3>&1 1>&2          # stdout is reserved for the final path

log() { echo "kiln: $*" >&2; }
die() { log "error: $*"; exit 1; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CACHE_ROOT=${KILN_CACHE_DIR:-/var/cache/kiln}
mkdir -p "$CACHE_ROOT/images"
CACHE=$(cd "$CACHE_ROOT/images" && pwd)
BUSYBOX=/bin/busybox
SIZE_MIB=${KILN_IMAGE_MIB:-512}

for p in busybox-static e2fsprogs binutils; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        log "installing $p"
        [[ $(id -u) == 0 ]] || die "$p missing; run as root or install it"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null || die "apt-get install $p failed"
    fi
done

AGENT=${1:-}
if [[ -z $AGENT ]]; then
    command -v swift >/dev/null || export PATH=/opt/swift/usr/bin:$PATH
    log "building kiln-agent (release, static)"
    (cd "$ROOT" && swift build -c release -j 2 --product kiln-agent >/dev/null) || die "building kiln-agent failed"
    AGENT=$ROOT/.build/release/kiln-agent
fi
[[ -x $AGENT ]] || die "no agent binary at $AGENT"
LC_ALL=C readelf -l "$AGENT" | grep -q INTERP && die "$AGENT is not statically linked"

BB_VER=$(dpkg-query -W -f='${Version}' busybox-static)
KEY=$(
    { echo "busybox-static $BB_VER"; sha256sum <"$BUSYBOX"; echo agent; sha256sum <"$AGENT"
      echo "size $SIZE_MIB"; echo script; cat "${BASH_SOURCE[0]}"; } | sha256sum | cut -c1-16
)
OUT_DIR=$CACHE/$KEY
OUT=$OUT_DIR/default.ext4

if [[ ! -f $OUT ]]; then
    log "building image $KEY"
    mkdir -p "$OUT_DIR"
    stage=$(mktemp -d)
    tmp=$OUT_DIR/.default.ext4.tmp.$$
    trap 'rm -rf "$stage" "$tmp"' EXIT
    for d in bin sbin usr/bin usr/sbin dev proc sys tmp run root etc home var/tmp mnt; do mkdir -p "$stage/$d"; done
    chmod 1777 "$stage/tmp" "$stage/var/tmp"
    chmod 0700 "$stage/root"
    install -m 0755 "$BUSYBOX" "$stage/bin/busybox"
    for applet in $("$BUSYBOX" --list-full); do
        [[ -e $stage/$applet || $applet == bin/busybox ]] || ln -s /bin/busybox "$stage/$applet"
    done
    strip -o "$stage/sbin/kiln-agent" "$AGENT"
    chmod 0755 "$stage/sbin/kiln-agent"
    # A static Swift binary finds its runtime through /proc/self/exe before /proc is mounted.
    mkdir -p "$stage/proc/self"
    ln -s /sbin/kiln-agent "$stage/proc/self/exe"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$stage/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$stage/etc/group"
    echo kiln >"$stage/etc/hostname"
    printf '127.0.0.1 localhost\n::1 localhost\n' >"$stage/etc/hosts"
    # No journal (the writable layer is thrown away with the sandbox) and inode tables
    # initialised now, so the guest kernel does no lazy-init writes.
    truncate -s "${SIZE_MIB}M" "$tmp"
    mkfs.ext4 -q -F -L kiln-root -O ^has_journal -E lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0 \
        -d "$stage" "$tmp" || die "mkfs.ext4 failed"
    mv -f "$tmp" "$OUT"
    trap - EXIT
    rm -rf "$stage"
    log "image $KEY: $OUT ($(du -k "$OUT" | cut -f1) KiB used of ${SIZE_MIB} MiB)"
else
    log "cached image $KEY"
fi
ln -sfn "$KEY/default.ext4" "$CACHE/.default.tmp.$$"
mv -Tf "$CACHE/.default.tmp.$$" "$CACHE/default.ext4"
echo "$OUT" >&3
