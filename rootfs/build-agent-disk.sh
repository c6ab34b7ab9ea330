#!/usr/bin/env bash
# Build the agent disk that every image boots through (docs/images.md, "Booting an image"): a
# small read-only ext4 holding only the static kiln-agent as /sbin/kiln-agent, the /proc/self/exe
# link a static Swift binary needs before /proc is mounted (rootfs/image-common.sh), and the
# directories the agent mounts on. The kernel boots it as the root (/dev/vdb); the agent mounts
# the image disk named by kiln.root= and pivots into it, so the image needs no Kiln file.
# (A disk, not an initramfs: the kernel unpacking the 7 MB agent cpio cost ~50 s more boot here.)
#
#   rootfs/build-agent-disk.sh [AGENT]   -> last stdout line: absolute path of the disk
#
# AGENT is a static kiln-agent binary; default: `swift build -c release --product kiln-agent`.
# Cached at ${KILN_CACHE_DIR:-/var/cache/kiln}/agent-disk/<key>/agent.ext4, <key> = short sha256
# of (the stripped agent, this script, rootfs/image-common.sh); agent-disk/agent.ext4 links to the latest.
set -euo pipefail

exec 3>&1 1>&2          # stdout is reserved for the final path

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/image-common.sh"
ROOT=$(cd "$HERE/.." && pwd)
CACHE_ROOT=${KILN_CACHE_DIR:-/var/cache/kiln}
mkdir -p "$CACHE_ROOT/agent-disk"
CACHE=$(cd "$CACHE_ROOT/agent-disk" && pwd)

ensure_packages binutils e2fsprogs
AGENT=$(agent_binary "$ROOT" "${1:-}")
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/sbin" "$stage/dev" "$stage/kiln-root"
install_agent "$stage" "$AGENT"

KEY=$({ echo agent; sha256sum <"$stage/sbin/kiln-agent"; echo script; cat "${BASH_SOURCE[0]}" "$HERE/image-common.sh"; } | sha256sum | cut -c1-16)
OUT_DIR=$CACHE/$KEY
OUT=$OUT_DIR/agent.ext4

if [[ ! -f $OUT ]]; then
    log "building agent disk $KEY"
    mkdir -p "$OUT_DIR"
    tmp=$OUT_DIR/.agent.ext4.tmp.$$
    trap 'rm -rf "$stage" "$tmp"' EXIT
    # The agent's size plus room for ext4's own structures.
    size=$(( $(du -sm "$stage" | cut -f1) + 8 ))
    make_ext4 "$stage" "$tmp" "$size" kiln-agent
    mv -f "$tmp" "$OUT"
    log "agent disk $KEY: $OUT ($size MiB)"
else
    log "cached agent disk $KEY"
fi
link_latest "$CACHE" "$KEY" agent.ext4
echo "$OUT" >&3
