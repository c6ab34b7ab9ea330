#!/usr/bin/env bash
# Build the agent initramfs that every sandbox boots from (docs/images.md, "Booting an image"):
# an UNCOMPRESSED newc cpio holding only the static kiln-agent as /init, the /proc/self/exe link
# a static Swift binary needs before /proc is mounted (rootfs/image-common.sh), and /dev/console.
# The agent mounts the image disk named by kiln.root= and switches to it; the image itself
# needs no Kiln file.
#
#   rootfs/build-agent-initramfs.sh [AGENT]   -> last stdout line: absolute path of the cpio
#
# AGENT is a static kiln-agent binary; default: `swift build -c release --product kiln-agent`.
# Cached at ${KILN_CACHE_DIR:-/var/cache/kiln}/agent-initramfs/<key>/agent-initramfs.cpio,
# <key> = short sha256 of (the stripped agent, this script); agent-initramfs/agent-initramfs.cpio
# links to the latest. Reproducible: owner 0:0, mtime 0.
set -euo pipefail

exec 3>&1 1>&2          # stdout is reserved for the final path

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/image-common.sh"
ROOT=$(cd "$HERE/.." && pwd)
CACHE_ROOT=${KILN_CACHE_DIR:-/var/cache/kiln}
mkdir -p "$CACHE_ROOT/agent-initramfs"
CACHE=$(cd "$CACHE_ROOT/agent-initramfs" && pwd)

ensure_packages binutils python3
AGENT=$(agent_binary "$ROOT" "${1:-}")
stripped=$(mktemp)
trap 'rm -f "$stripped"' EXIT
strip -o "$stripped" "$AGENT"

KEY=$({ echo agent; sha256sum <"$stripped"; echo script; cat "${BASH_SOURCE[0]}"; } | sha256sum | cut -c1-16)
OUT_DIR=$CACHE/$KEY
OUT=$OUT_DIR/agent-initramfs.cpio

if [[ ! -f $OUT ]]; then
    log "building agent initramfs $KEY"
    mkdir -p "$OUT_DIR"
    tmp=$OUT_DIR/.agent-initramfs.cpio.tmp.$$
    trap 'rm -f "$stripped" "$tmp"' EXIT
    # A newc writer of our own, as in rootfs/build-initramfs.sh: no root needed for the device node.
    python3 - "$tmp" "$stripped" <<'PY'
import stat, sys

out, agent = sys.argv[1], sys.argv[2]
ino = [730000]

def entry(f, name, mode, data=b"", rdev=(0, 0), nlink=1):
    ino[0] += 1
    name_b = name.encode() + b"\0"
    fields = [ino[0], mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0]
    hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
    f.write(hdr + name_b)
    f.write(b"\0" * (-(len(hdr) + len(name_b)) % 4))
    f.write(data)
    f.write(b"\0" * (-len(data) % 4))

with open(out, "wb") as f:
    for d in ("dev", "proc", "proc/self"):
        entry(f, d, stat.S_IFDIR | 0o755, nlink=2)
    entry(f, "dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))  # the kernel opens init's stdio on it
    entry(f, "init", stat.S_IFREG | 0o755, open(agent, "rb").read())
    entry(f, "proc/self/exe", stat.S_IFLNK | 0o777, b"/init")
    entry(f, "TRAILER!!!", 0)
    f.write(b"\0" * (-f.tell() % 512))
PY
    mv -f "$tmp" "$OUT"
    log "agent initramfs $KEY: $OUT ($(stat -c %s "$OUT") bytes)"
else
    log "cached agent initramfs $KEY"
fi
link_latest "$CACHE" "$KEY" agent-initramfs.cpio
echo "$OUT" >&3
