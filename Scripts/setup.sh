#!/usr/bin/env bash
# Sets up Kiln on Debian: installs what the guest kernel, initramfs and image builds need,
# builds (or reuses from the cache) Kiln's guest kernel, initramfs and default sandbox image,
# and builds kiln.
#   Scripts/setup.sh            release build of kiln at .build/release/kiln (kiln-vmm and kiln-egress beside it)
#   Scripts/setup.sh --debug    debug build only (what the tests use)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { echo "kiln-setup: $*" >&2; }

[[ $(id -u) == 0 ]] || { log "run as root (Kiln needs /dev/kvm and installs Debian packages)"; exit 1; }
[[ -e /dev/kvm ]] || log "warning: /dev/kvm is missing: Kiln builds, but cannot run a VM on this machine"

# Swift is not a Debian package: use the toolchain on PATH, or the usual /opt/swift install.
if ! command -v swift >/dev/null; then
    for d in /opt/swift/usr/bin /usr/share/swift/usr/bin; do [[ -x $d/swift ]] && export PATH=$d:$PATH && break; done
fi
command -v swift >/dev/null || { log "Swift 6.1 or newer is required (https://www.swift.org/install/linux/); put swift on PATH"; exit 1; }

# Package lists: refreshed once when apt has never been updated on this machine.
if [[ -z $(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages' -print -quit 2>/dev/null) ]]; then
    log "apt-get update"
    apt-get update -qq >/dev/null
fi

# swift build, quiet unless it fails.
build() {
    local out
    out=$(mktemp)
    if ! swift build "$@" >"$out" 2>&1; then
        grep -E 'error|warning' "$out" | head -40 >&2 || tail -40 "$out" >&2
        rm -f "$out"
        log "swift build $* failed"
        exit 1
    fi
    rm -f "$out"
}

# Tools the tests use on the host side (ext4 images, unpacking the initramfs), zlib/zstd that
# the Images target links for layers (the zstd tool makes test layers; erofs-utils for root disks),
# and the image tests' registry, token service, htpasswd, test images and pushes (Tests/images/;
# musl-tools for make-musl-image.sh's dynamically linked musl program).
need=()
for p in e2fsprogs cpio zlib1g-dev libzstd-dev zstd erofs-utils docker-registry umoci skopeo apache2-utils openssl busybox-static bash-static musl-tools python3 nftables iproute2 util-linux; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

log "guest kernel (cached after the first build, which takes several minutes)"
Kernels/build.sh >/dev/null
log "initramfs"
rootfs/build-initramfs.sh >/dev/null
log "sandbox image (ext4 with busybox and the release kiln-agent)"
rootfs/build-image.sh >/dev/null
log "agent disk (the release kiln-agent that boots every image, docs/images.md)"
rootfs/build-agent-disk.sh >/dev/null

if [[ ${1:-} == --debug ]]; then
    log "building kiln (debug) and its tests"
    build --build-tests
else
    log "building kiln, kiln-vmm (its jailed VMM) and kiln-egress (domain rules' DNS and proxy) (release)"
    build -c release --product kiln
    build -c release --product kiln-vmm
    build -c release --product kiln-egress
    log "ready: .build/release/kiln run -- COMMAND (or .build/release/kiln boot)"
fi
