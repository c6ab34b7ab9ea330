#!/usr/bin/env bash
# Build Kiln's guest kernel (uncompressed vmlinux with a PVH entry note).
#
#   Kernels/build.sh            -> last stdout line: absolute path of vmlinux
#
# Source: Debian's linux-source-6.12 package, plus Kernels/patches/*.patch,
# configured as `make tinyconfig` + Kernels/config.  The result is cached at
#   ${KILN_CACHE_DIR:-/var/cache/kiln}/kernel/<key>/vmlinux
# where <key> is a short sha256 of the linux-source-6.12 package version,
# Kernels/config, every patch and this script.  A cached result is reused
# as is.  The build tree stays in the cache so that later builds are
# incremental.  Progress goes to stderr, the build log into the cache.
set -euo pipefail

exec 3>&1 1>&2          # stdout is reserved for the final path

log() { echo "kiln: $*" >&2; }
die() { log "error: $*"; exit 1; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONFIG_FRAGMENT=$HERE/config
PATCH_DIR=$HERE/patches
CACHE_ROOT=${KILN_CACHE_DIR:-/var/cache/kiln}
mkdir -p "$CACHE_ROOT/kernel"
CACHE=$(cd "$CACHE_ROOT/kernel" && pwd)
SRC_PKG=linux-source-6.12
SRC_TAR=/usr/src/linux-source-6.12.tar.xz
JOBS=${KILN_JOBS:-$(( $(nproc) + 1 ))}

# ---- dependencies --------------------------------------------------------
PKGS=(linux-source-6.12 build-essential flex bison bc libelf-dev libssl-dev
      cpio python3 xz-utils util-linux)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    [[ $(id -u) == 0 ]] || die "missing packages (${missing[*]}); run as root or install them"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
        || die "apt-get install failed"
fi
[[ -f $SRC_TAR ]] || die "$SRC_TAR not found"

# ---- cache key ------------------------------------------------------------
SRC_VER=$(dpkg-query -W -f='${Version}' "$SRC_PKG")
shopt -s nullglob
PATCHES=("$PATCH_DIR"/*.patch)
shopt -u nullglob
KEY=$(
    {
        echo "source $SRC_PKG $SRC_VER"
        echo "config"; cat "$CONFIG_FRAGMENT"
        for p in "${PATCHES[@]}"; do echo "patch $(basename "$p")"; cat "$p"; done
        echo "script"; cat "${BASH_SOURCE[0]}"
    } | sha256sum | cut -c1-16
)
OUT_DIR=$CACHE/$KEY
OUT=$OUT_DIR/vmlinux

link_latest() {
    ln -sfn "$KEY/vmlinux" "$CACHE/.vmlinux.tmp.$$"
    mv -Tf "$CACHE/.vmlinux.tmp.$$" "$CACHE/vmlinux"
}

if [[ -f $OUT ]]; then
    log "cached kernel $KEY"
    link_latest
    echo "$OUT" >&3
    exit 0
fi

# one build at a time per cache
exec 9>"$CACHE/.lock"
flock 9
if [[ -f $OUT ]]; then link_latest; echo "$OUT" >&3; exit 0; fi

mkdir -p "$CACHE/logs" "$CACHE/build"
LOG=$CACHE/logs/build-$KEY.log
: >"$LOG"
TREE=$CACHE/build/linux-6.12
fail() {
    log "error: $*; last lines of $LOG:"
    tail -n 40 "$LOG" >&2
    exit 1
}

# ---- source tree ------------------------------------------------------------
if [[ -d $TREE ]]; then
    if [[ ! -f $TREE/.kiln-source || $(cat "$TREE/.kiln-source") != "$SRC_VER" \
          || -e $TREE/.kiln-patching ]]; then
        log "discarding stale build tree"
        mv "$TREE" "$CACHE/build/.old.$$" && rm -rf "$CACHE/build/.old.$$"
    fi
fi
rm -rf "$CACHE/build"/.old.* "$CACHE/build"/.extract.*
if [[ ! -d $TREE ]]; then
    log "unpacking $SRC_PKG $SRC_VER"
    tmp=$CACHE/build/.extract.$$
    mkdir -p "$tmp"
    tar -xf "$SRC_TAR" -C "$tmp" >>"$LOG" 2>&1 || fail "unpacking $SRC_TAR"
    echo "$SRC_VER" >"$tmp/linux-source-6.12/.kiln-source"
    mkdir -p "$tmp/linux-source-6.12/.kiln-applied"
    mv "$tmp/linux-source-6.12" "$TREE"
    rm -rf "$tmp"
fi

# ---- patches: make the applied set equal Kernels/patches --------------------
APPLIED=$TREE/.kiln-applied
same=1
if [[ $(cd "$APPLIED" && ls -1 | sort) != $(for p in "${PATCHES[@]}"; do basename "$p"; done | sort) ]]; then
    same=0
else
    for p in "${PATCHES[@]}"; do cmp -s "$p" "$APPLIED/$(basename "$p")" || { same=0; break; }; done
fi
if ((!same)); then
    touch "$TREE/.kiln-patching"
    mapfile -t old < <(cd "$APPLIED" && ls -1 | sort -r)
    for p in "${old[@]}"; do
        log "reverting $p"
        (cd "$TREE" && patch -p1 -R -s -N <"$APPLIED/$p") >>"$LOG" 2>&1 \
            || fail "reverting $p (delete $TREE to start over)"
        rm -f "$APPLIED/$p"
    done
    for p in "${PATCHES[@]}"; do
        log "applying $(basename "$p")"
        (cd "$TREE" && patch -p1 -s -N <"$p") >>"$LOG" 2>&1 || fail "applying $(basename "$p")"
        cp "$p" "$APPLIED/"
    done
    rm -f "$TREE/.kiln-patching"
fi

# ---- config -----------------------------------------------------------------
MAKE=(make -C "$TREE" ARCH=x86_64 KBUILD_BUILD_USER=kiln KBUILD_BUILD_HOST=kiln
      KBUILD_BUILD_TIMESTAMP="kiln $SRC_VER")
log "configuring (tinyconfig + Kernels/config)"
frag=$CACHE/build/config.fragment
# "CONFIG_X=n" -> "# CONFIG_X is not set", the form kconfig writes itself
sed -E 's/^(CONFIG_[A-Za-z0-9_]+)=n$/# \1 is not set/' "$CONFIG_FRAGMENT" >"$frag"
"${MAKE[@]}" tinyconfig >>"$LOG" 2>&1 || fail "make tinyconfig"
(cd "$TREE" && ARCH=x86_64 scripts/kconfig/merge_config.sh -m .config "$frag") >>"$LOG" 2>&1 \
    || fail "merge_config.sh"
"${MAKE[@]}" olddefconfig >>"$LOG" 2>&1 || fail "make olddefconfig"

bad=0
while IFS= read -r line; do
    line=${line%%#*}; line=${line//[[:space:]]/}
    [[ -z $line ]] && continue
    opt=${line%%=*}; val=${line#*=}
    if [[ $val == n ]]; then
        if grep -Eq "^$opt=" "$TREE/.config"; then
            log "config: wanted $opt=n, got $(grep -E "^$opt=" "$TREE/.config")"; bad=1
        fi
    elif ! grep -qxF "$opt=$val" "$TREE/.config"; then
        got=$(grep -E "^$opt=|^# $opt is not set" "$TREE/.config" || echo "$opt absent")
        log "config: wanted $opt=$val, got: $got"; bad=1
    fi
done <"$CONFIG_FRAGMENT"
((bad == 0)) || die "Kernels/config not satisfied (dependencies missing?); see $TREE/.config"

# ---- build ------------------------------------------------------------------
log "building vmlinux with -j$JOBS (log: $LOG)"
start=$(date +%s)
"${MAKE[@]}" -j"$JOBS" vmlinux >>"$LOG" 2>&1 || fail "make vmlinux"
log "built in $(( $(date +%s) - start )) s"

# the PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY, type 18) must be present
readelf -n "$TREE/vmlinux" 2>/dev/null | grep -A1 -E '^\s*Xen' | grep -Eq '0x00000012|PHYS32' \
    || die "vmlinux has no Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"

mkdir -p "$OUT_DIR"
cp "$TREE/.config" "$OUT_DIR/config"
cp "$TREE/vmlinux" "$OUT_DIR/.vmlinux.tmp.$$"
mv -f "$OUT_DIR/.vmlinux.tmp.$$" "$OUT"
link_latest
log "kernel $KEY: $OUT ($(stat -c %s "$OUT") bytes)"
echo "$OUT" >&3
