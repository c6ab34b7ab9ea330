#!/usr/bin/env bash
# Build a Debian sandbox image on request: debootstrap (minbase + python3) as an ext4 root
# filesystem with kiln-agent as /sbin/kiln-agent. Then: kiln run --image debian -- python3 ...
#
#   rootfs/build-debian-image.sh [AGENT]   -> last stdout line: absolute path of the image
#
# Environment: KILN_DEBIAN_SUITE (default bookworm), KILN_DEBIAN_MIRROR (default
# http://deb.debian.org/debian), KILN_DEBIAN_PACKAGES (extra, comma-separated), KILN_IMAGE_MIB
# (default 2048, sparse). Cached at ${KILN_CACHE_DIR:-/var/cache/kiln}/images/<key>/debian.ext4
# keyed by (agent, suite, packages, this script); images/debian.ext4 links to the latest.
set -euo pipefail

exec 3>&1 1>&2

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/image-common.sh"
ROOT=$(cd "$HERE/.." && pwd)
CACHE_ROOT=${KILN_CACHE_DIR:-/var/cache/kiln}
mkdir -p "$CACHE_ROOT/images"
CACHE=$(cd "$CACHE_ROOT/images" && pwd)
SUITE=${KILN_DEBIAN_SUITE:-bookworm}
MIRROR=${KILN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3${KILN_DEBIAN_PACKAGES:+,$KILN_DEBIAN_PACKAGES}
SIZE_MIB=${KILN_IMAGE_MIB:-2048}

[[ $(id -u) == 0 ]] || die "run as root (debootstrap needs it)"
ensure_packages debootstrap e2fsprogs binutils
AGENT=$(agent_binary "$ROOT" "${1:-}")

KEY=$(
    { echo "$SUITE $MIRROR $PACKAGES $SIZE_MIB"; echo agent; sha256sum <"$AGENT"; echo script; cat "${BASH_SOURCE[0]}" "$HERE/image-common.sh"; } \
        | sha256sum | cut -c1-16
)
OUT_DIR=$CACHE/$KEY
OUT=$OUT_DIR/debian.ext4

if [[ ! -f $OUT ]]; then
    log "building Debian $SUITE image $KEY with $PACKAGES (debootstrap: a few minutes)"
    mkdir -p "$OUT_DIR"
    stage=$(mktemp -d)
    tmp=$OUT_DIR/.debian.ext4.tmp.$$
    trap 'rm -rf "$stage" "$tmp"' EXIT
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$stage" "$MIRROR" >"$OUT_DIR/debootstrap.log" 2>&1 \
        || { tail -20 "$OUT_DIR/debootstrap.log" >&2; die "debootstrap failed (log: $OUT_DIR/debootstrap.log)"; }
    rm -rf "$stage"/var/cache/apt/archives/*.deb "$stage"/var/lib/apt/lists/*
    install_agent "$stage" "$AGENT"
    echo kiln >"$stage/etc/hostname"
    make_ext4 "$stage" "$tmp" "$SIZE_MIB" kiln-debian
    mv -f "$tmp" "$OUT"
    trap - EXIT
    rm -rf "$stage"
    log "image $KEY: $OUT ($(du -k "$OUT" | cut -f1) KiB used of ${SIZE_MIB} MiB)"
else
    log "cached Debian image $KEY"
fi
link_latest "$CACHE" "$KEY" debian.ext4
echo "$OUT" >&3
