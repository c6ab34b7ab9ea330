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

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/image-common.sh"
ROOT=$(cd "$HERE/.." && pwd)
CACHE_ROOT=${KILN_CACHE_DIR:-/var/cache/kiln}
mkdir -p "$CACHE_ROOT/images"
CACHE=$(cd "$CACHE_ROOT/images" && pwd)
BUSYBOX=/bin/busybox
SIZE_MIB=${KILN_IMAGE_MIB:-512}

ensure_packages busybox-static e2fsprogs binutils
AGENT=$(agent_binary "$ROOT" "${1:-}")

BB_VER=$(dpkg-query -W -f='${Version}' busybox-static)
KEY=$(
    { echo "busybox-static $BB_VER"; sha256sum <"$BUSYBOX"; echo agent; sha256sum <"$AGENT"
      echo "size $SIZE_MIB"; echo script; cat "${BASH_SOURCE[0]}" "$HERE/image-common.sh"; } | sha256sum | cut -c1-16
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
    install_agent "$stage" "$AGENT"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$stage/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$stage/etc/group"
    echo kiln >"$stage/etc/hostname"
    printf '127.0.0.1 localhost\n::1 localhost\n' >"$stage/etc/hosts"
    make_ext4 "$stage" "$tmp" "$SIZE_MIB" kiln-root
    mv -f "$tmp" "$OUT"
    trap - EXIT
    rm -rf "$stage"
    log "image $KEY: $OUT ($(du -k "$OUT" | cut -f1) KiB used of ${SIZE_MIB} MiB)"
else
    log "cached image $KEY"
fi
link_latest "$CACHE" "$KEY" default.ext4
echo "$OUT" >&3
