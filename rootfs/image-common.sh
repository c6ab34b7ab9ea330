# Shared by rootfs/build-image.sh and rootfs/build-debian-image.sh (sourced, not run):
# the agent binary, its place in an image, and the ext4 that both images are.

log() { echo "kiln: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ensure_packages PKG...: installs missing Debian packages (needs root).
ensure_packages() {
    local p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            log "installing $p"
            [[ $(id -u) == 0 ]] || die "$p missing; run as root or install it"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null || die "apt-get install $p failed"
        fi
    done
}

# agent_binary ROOT [AGENT]: prints the static kiln-agent to use, building the release one if none is given.
agent_binary() {
    local root=$1 agent=${2:-}
    if [[ -z $agent ]]; then
        command -v swift >/dev/null || export PATH=/opt/swift/usr/bin:$PATH
        log "building kiln-agent (release, static)"
        (cd "$root" && swift build -c release -j 2 --product kiln-agent >/dev/null) || die "building kiln-agent failed"
        agent=$root/.build/release/kiln-agent
    fi
    [[ -x $agent ]] || die "no agent binary at $agent"
    LC_ALL=C readelf -l "$agent" | grep -q INTERP && die "$agent is not statically linked"
    echo "$agent"
}

# install_agent STAGE AGENT: /sbin/kiln-agent (stripped), and the /proc/self/exe link a static
# Swift binary needs to find its runtime before /proc is mounted.
install_agent() {
    strip -o "$1/sbin/kiln-agent" "$2"
    chmod 0755 "$1/sbin/kiln-agent"
    mkdir -p "$1/proc/self"
    ln -sfn /sbin/kiln-agent "$1/proc/self/exe"
}

# make_ext4 STAGE FILE SIZE_MIB LABEL: no journal (the writable layer is thrown away with the
# sandbox) and inode tables initialised now, so the guest kernel does no lazy-init writes.
make_ext4() {
    truncate -s "${3}M" "$2"
    mkfs.ext4 -q -F -L "$4" -O ^has_journal -E lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0 \
        -d "$1" "$2" || die "mkfs.ext4 failed"
}

# link_latest CACHE KEY FILE: CACHE/FILE -> KEY/FILE, atomically.
link_latest() {
    ln -sfn "$2/$3" "$1/.$3.tmp.$$"
    mv -Tf "$1/.$3.tmp.$$" "$1/$3"
}
