#!/usr/bin/env bash
# Build a Debian sandbox image on request: debootstrap (minbase + python3) as an ext4 root
# filesystem with kiln-agent as /sbin/kiln-agent. Then: kiln run --image debian -- python3 ...
# It is shaped like E2B's base template (what `kiln serve` offers as "base"): bash, coreutils,
# python3, a user `user` (1000:1000, /home/user, /bin/bash), and login scripts that print nothing
# and start no process, because every command arrives as `bash -l -c CMD` and every guest process
# costs most of a second on emulated-kernel hosts (docs/host-kvm.md in shared docs).
#
#   rootfs/build-debian-image.sh [AGENT]   -> last stdout line: absolute path of the image
#
# Environment: KILN_DEBIAN_SUITE (default bookworm), KILN_DEBIAN_MIRROR (default
# http://deb.debian.org/debian), KILN_DEBIAN_PACKAGES (extra, comma-separated), KILN_IMAGE_MIB
# (default 2048, sparse), KILN_IMAGE_NAME (default debian). Cached at
# ${KILN_CACHE_DIR:-/var/cache/kiln}/images/<key>/debian.ext4 keyed by (agent, suite, packages,
# this script); images/$KILN_IMAGE_NAME.ext4 links to the latest, and `kiln run --image NAME`
# finds it. A variant gets a name of its own so that the link to it is not images/debian.ext4,
# the image `--image debian` and the tests use:
#   KILN_IMAGE_NAME=debian-git KILN_DEBIAN_PACKAGES=git rootfs/build-debian-image.sh
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
NAME=${KILN_IMAGE_NAME:-debian}

[[ $(id -u) == 0 ]] || die "run as root (debootstrap needs it)"
# `kiln run --image NAME` takes a name with a slash for a path and "default" for Kiln's own image.
[[ $NAME =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ && $NAME != default ]] || die "KILN_IMAGE_NAME '$NAME': letters, digits, . _ - only, and not 'default'"

# shape_like_e2b STAGE: the user, quiet login scripts, and nothing the sandbox never reads.
shape_like_e2b() {
    local s=$1
    chroot "$s" /usr/sbin/groupadd --gid 1000 user
    # No ~/.bash_logout: a non-interactive login shell that runs `exit N` would run clear_console.
    rm -f "$s/etc/skel/.bash_logout"
    chroot "$s" /usr/sbin/useradd --uid 1000 --gid 1000 --create-home --home-dir /home/user --shell /bin/bash user
    # Debian's /etc/profile runs $(id -u) (a fork, and on emulated hosts a forked shell is the
    # case that can crash) and root's ~/.profile runs mesg: one fixed PATH for everyone instead.
    cat >"$s/etc/profile" <<'PROFILE'
# Kiln: read by every `bash -l`; starts no process and prints nothing.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
if [ -n "${PS1-}" ] && [ -n "${BASH_VERSION-}" ] && [ -f /etc/bash.bashrc ]; then . /etc/bash.bashrc; fi
PROFILE
    rm -f "$s"/etc/profile.d/*
    printf '%s\n' '# Kiln: quiet login for root.' 'if [ -n "${BASH_VERSION-}" ] && [ -f ~/.bashrc ]; then . ~/.bashrc; fi' >"$s/root/.profile"
    echo kiln >"$s/etc/hostname"
    printf '127.0.0.1 localhost kiln\n::1 localhost\n' >"$s/etc/hosts"
    # Documentation, manuals, translations and apt's caches: never read in a sandbox.
    rm -rf "$s"/usr/share/doc/* "$s"/usr/share/man/* "$s"/usr/share/info/* "$s"/usr/share/lintian \
        "$s"/var/cache/apt/archives/*.deb "$s"/var/cache/apt/*.bin "$s"/var/lib/apt/lists/* \
        "$s"/var/log/*.log "$s"/var/log/apt/* "$s"/var/cache/debconf/*-old
    [[ ! -d $s/usr/share/locale ]] || find "$s/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
}

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
    shape_like_e2b "$stage"
    install_agent "$stage" "$AGENT"
    make_ext4 "$stage" "$tmp" "$SIZE_MIB" kiln-debian
    mv -f "$tmp" "$OUT"
    trap - EXIT
    rm -rf "$stage"
    log "image $KEY: $OUT ($(du -k "$OUT" | cut -f1) KiB used of ${SIZE_MIB} MiB)"
else
    log "cached Debian image $KEY"
fi
# images/NAME.ext4 -> KEY/debian.ext4, atomically (link_latest, with a link name of its own).
ln -sfn "$KEY/debian.ext4" "$CACHE/.$NAME.ext4.tmp.$$"
mv -Tf "$CACHE/.$NAME.ext4.tmp.$$" "$CACHE/$NAME.ext4"
echo "$OUT" >&3
