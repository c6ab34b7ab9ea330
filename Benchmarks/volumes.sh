#!/usr/bin/env bash
# Volume (virtio-fs) benchmarks (docs/benchmarks.md, "Volumes (virtio-fs)"), as root.
#
# One `kiln run` (default busybox image) with a read-only share (/src) and a read-write one (/out)
# runs every step in turn and times each inside the guest, from /proc/uptime read by the shell's
# own `read` (no process of its own, so the timing does not add a fork):
#   read    sequential read (sha256sum) of a READ_MIB file through the share, against the same
#           number of bytes on the guest's own disk (its ext4 write layer: the file the disk-write
#           step wrote, zeros, after the page cache is dropped so that the read comes from the disk)
#   write   sequential write of READ_MIB MiB of zeros (+ sync) to the share and to the disk
#   tree    find + stat over TREE_FILES small files, through the share and on the disk
#   checkout find + stat over a `git clone` of this repository (the lstat of every path that
#           `git status` makes; the git rows below run `git status` itself)
# The disk copies of the trees come from tarballs read through the share in untimed steps.
# An `empty` step (the same marks around `true`, the shell's builtin, so no process) is the cost
# of the marks; it is subtracted from each row. Host CPU (kiln and its VMM, from /proc) is sampled
# when each step's marks reach the host, so each row has its own host CPU, and the host's load
# average (1 min) with it.
#
# Then (GIT=0 skips it) one `kiln run --image debian-git` (Kiln's Debian image plus git, built on
# first use by KILN_IMAGE_NAME=debian-git KILN_DEBIAN_PACKAGES=git rootfs/build-debian-image.sh)
# times `git status --porcelain` on the same checkout through a read-only share and on a copy in
# the guest's own disk, cold and warm (see the git part below for how).
#
# Then, if it runs here, the same read / tree / checkout steps through Debian's virtiofsd
# under QEMU microvm with the same kernel (installs qemu-system-x86 if missing; QEMU=0 skips).
#
#   Benchmarks/volumes.sh            KILN=.build/debug/kiln Benchmarks/volumes.sh   (no release build)
#   READ_MIB=64 TREE_FILES=10000 (the issue's sizes, the defaults); CHECKOUT=0 KILN_ROWS=0 GIT=0 QEMU=0 skip those parts
#   KILN=... KILN_ROWS=0 QEMU=0 READ_MIB=1 TREE_FILES=10 Benchmarks/volumes.sh   (only the git rows)
set -euo pipefail
cd "$(dirname "$0")/.."
READ_MIB=${READ_MIB:-64}
TREE_FILES=${TREE_FILES:-10000}
if [[ -z ${KILN:-} ]]; then
    echo "volumes.sh: building (release)" >&2
    swift build -c release -j 2 --product kiln >&2
    swift build -c release -j 2 --product kiln-vmm >&2
    KILN=.build/release/kiln
fi
work=$(mktemp -d /tmp/kiln-volume-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/ro/tree" "$work/rw"
head -c $((READ_MIB << 20)) /dev/urandom >"$work/ro/big.bin"
python3 - "$work/ro/tree" "$TREE_FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = f"{root}/d{i // 100:03}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/f{i % 100:03}", "wb") as out:
        out.write(os.urandom(64 + i % 960))
PY
# --no-hardlinks: a local clone hardlinks .git/objects, and the chown below would then give this
# repository's own object files to uid 1000.
git clone -q --no-hardlinks "$(git rev-parse --show-toplevel)" "$work/ro/checkout"
tar -C "$work/ro" -cf "$work/ro/tree.tar" tree
tar -C "$work/ro" -cf "$work/ro/checkout.tar" checkout
# A jailed VMM runs as the first share's owner (docs/volumes.md): give both shares the same one,
# so that the read-write share is writable to it.
chmod 755 "$work"
chown -R 1000:1000 "$work/ro" "$work/rw"
host_big=$(sha256sum <"$work/ro/big.bin" | cut -d' ' -f1)
host_tree=$(find "$work/ro/tree" | wc -l)
host_checkout=$(find "$work/ro/checkout" | wc -l)
echo "date: $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg) kiln: $KILN"
echo "sizes: read/write ${READ_MIB} MiB, tree ${TREE_FILES} files ($host_tree paths), checkout $host_checkout paths"
echo "host: sha256 $host_big"

# The guest's steps. `m NAME CMD...` prints "B NAME uptime", runs CMD, prints "E NAME uptime rc";
# only builtins between the marks besides CMD itself. Untimed steps are plain commands.
steps=$(cat <<EOF
m() { n=\$1; shift; read u x </proc/uptime; echo "B \$n \$u"; "\$@"; r=\$?; read u x </proc/uptime; echo "E \$n \$u \$r"; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; }
m empty true
m empty true
m share-read sha256sum /src/big.bin
m share-write sh -c 'head -c $((READ_MIB << 20)) /dev/zero >/out/w.bin && sync'
m disk-write sh -c 'head -c $((READ_MIB << 20)) /dev/zero >/root/w.bin && sync'
drop
m disk-read sha256sum /root/w.bin
m share-find-stat sh -c 'find /src/tree -exec stat -c "%s %Y" {} + | wc -l'
tar -C /root -xf /src/tree.tar; drop
m disk-find-stat sh -c 'find /root/tree -exec stat -c "%s %Y" {} + | wc -l'
EOF
)
# CHECKOUT=0 leaves out the checkout rows (their untimed tar copy takes minutes here).
[[ ${CHECKOUT:-1} == 0 ]] || steps+=$(cat <<'EOF'

m share-checkout-find-stat sh -c 'find /src/checkout -exec stat -c "%s %Y" {} + | wc -l'
tar -C /root -xf /src/checkout.tar; drop
m disk-checkout-find-stat sh -c 'find /root/checkout -exec stat -c "%s %Y" {} + | wc -l'
EOF
)

# stream.py KILN MIB RUN-ARGS...: runs `kiln run RUN-ARGS`, streams the guest's output, at each
# mark sums the CPU of kiln and every process below it, and prints the rows.
cat >"$work/stream.py" <<'PY'
import os, subprocess, sys, time
kiln, mib, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
tick = os.sysconf("SC_CLK_TCK")

def tree_cpu(root):
    kids, cpu = {}, {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(f[1]), []).append(int(p))
        cpu[int(p)] = (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / tick
    total, todo = 0.0, [root]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo += kids.get(p, [])
    return total

t0 = time.monotonic()
p = subprocess.Popen([kiln, "run", *argv], stdout=subprocess.PIPE, text=True)
begin, rows, out = {}, [], {}
for line in p.stdout:
    f = line.split()
    if f[:1] == ["B"]:
        begin[f[1]] = (float(f[2]), tree_cpu(p.pid))
    elif f[:1] == ["E"]:
        b, c = begin[f[1]]
        load = open("/proc/loadavg").read().split()[0]  # the host's, when the end mark arrives
        rows.append((f[1], float(f[2]) - b, tree_cpu(p.pid) - c, f[3], out.pop(f[1], ""), load))
        print("raw:", *rows[-1], flush=True)  # a run cut short still reports its rows
    elif begin:
        name = list(begin)[-1]
        out[name] = (out.get(name, "") + " " + line.strip()).strip()
rc = p.wait()
print(f"kiln run: exit {rc}, wall {time.monotonic() - t0:.1f} s (restore, mounts, untimed copies included)")
empty = min((r[1] for r in rows if r[0] == "empty"), default=0.0)
empty_cpu = min((r[2] for r in rows if r[0] == "empty"), default=0.0)
print(f"empty step (the marks around the shell's builtin true): {empty:.2f} s guest, {empty_cpu:.2f} s host CPU; subtracted below")
print("| step | guest time | rate | host CPU | host CPU per GiB | rc | output | load (1 min) |")
print("|---|---:|---:|---:|---:|---|---|---:|")
for name, dt, cpu, r, o, load in rows:
    if name == "empty":
        continue
    dt, cpu = max(dt - empty, 0.0), max(cpu - empty_cpu, 0.0)
    bulk = "read" in name or "write" in name
    rate = f"{mib / dt:.2f} MiB/s" if bulk and dt else ""
    per_gib = f"{cpu * 1024 / mib:.0f} s" if bulk else ""
    print(f"| {name} | {dt:.2f} s | {rate} | {cpu:.2f} s | {per_gib} | {r} | {o[:70]} | {load} |")
sys.exit(rc)
PY
# KILN_ROWS=0 leaves out the Kiln rows of the busybox run (read, write, tree, checkout).
if [[ ${KILN_ROWS:-1} != 0 ]]; then
    python3 "$work/stream.py" "$KILN" "$READ_MIB" -v "$work/ro:/src:ro" -v "$work/rw:/out" -- sh -c "$steps"
fi

# The git rows (GIT=0 skips them): `git status` on the checkout through the read-only share and on
# a copy in the guest's own disk, in one `kiln run --image debian-git` (Kiln's Debian image plus
# git, built here on first use: debootstrap from the Debian mirror, a few minutes, host-side).
# Every git runs with safe.directory=* (the share's files are uid 1000's, the guest's git runs as
# root), core.untrackedCache=false, core.fsmonitor=false and GIT_OPTIONAL_LOCKS=0 (what
# --no-optional-locks sets: status does not try to write the index, which the share refuses), all
# from the environment (command scope). The share's index is refreshed on the host first (the
# chown above changed every file's ctime), so that, with the host's inode numbers, owners and
# times reported through the share, git finds every entry stat-clean, as in a user's own checkout;
# the disk copy's index is refreshed in the guest in an untimed step (tar gave it new inodes).
# Each side runs twice: cold (after the guest's page, dentry and inode caches are dropped; the
# host's page cache stays warm) and warm (straight after). `git --version` is the cost of starting
# git beyond `/bin/true` (the process row); diff-files counts the entries git finds stat-dirty
# and the host counts the racily clean ones (both 0: the status rows are lstat, readdir and index
# work, not content hashing).
if [[ ${GIT:-1} != 0 ]]; then
    agent=$(dirname "$KILN")/kiln-agent
    [[ -x $agent ]] || agent=
    git_image=$(KILN_IMAGE_NAME=debian-git KILN_DEBIAN_PACKAGES=git rootfs/build-debian-image.sh ${agent:+"$agent"} | tail -1)
    # An index written in the same second as the files leaves every entry racily clean (its mtime
    # not older than the index's), and git then reads every file's content again on every status,
    # since it cannot rewrite the index on a read-only share: refresh it a second later.
    sleep 1
    git -C "$work/ro/checkout" -c safe.directory='*' update-index -q --refresh
    chown 1000:1000 "$work/ro/checkout/.git/index"
    racy=$(git -C "$work/ro/checkout" -c safe.directory='*' ls-files --debug \
        | awk -v t="$(stat -c %Y "$work/ro/checkout/.git/index")" '$1 == "mtime:" { split($2, a, ":"); if (a[1] >= t) n++ } END { print n + 0 }')
    echo "git part: $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg) image debian-git ($git_image)," \
        "checkout $(git -C "$work/ro/checkout" -c safe.directory='*' ls-files | wc -l) tracked files, $host_checkout paths," \
        "$racy racily clean index entries"
    git_steps=$(cat <<'EOF'
m() { n=$1; shift; read u x </proc/uptime; echo "B $n $u"; "$@" 2>&1; r=$?; read u x </proc/uptime; echo "E $n $u $r"; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; }
export GIT_CONFIG_COUNT=3 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0='*' \
    GIT_CONFIG_KEY_1=core.untrackedCache GIT_CONFIG_VALUE_1=false \
    GIT_CONFIG_KEY_2=core.fsmonitor GIT_CONFIG_VALUE_2=false GIT_OPTIONAL_LOCKS=0
m empty true
m empty true
m process /bin/true
m git-version git --version
drop
m share-git-status-cold git -C /src/checkout status --porcelain
m share-git-status-warm git -C /src/checkout status --porcelain
m share-git-diff-files sh -c 'git -C /src/checkout diff-files --name-only | wc -l'
tar -C /root -xf /src/checkout.tar
git -C /root/checkout update-index -q --refresh
drop
m disk-git-status-cold git -C /root/checkout status --porcelain
m disk-git-status-warm git -C /root/checkout status --porcelain
m disk-git-diff-files sh -c 'git -C /root/checkout diff-files --name-only | wc -l'
EOF
)
    python3 "$work/stream.py" "$KILN" "$READ_MIB" --image debian-git -v "$work/ro:/src:ro" -- sh -c "$git_steps"
fi

[[ ${QEMU:-1} == 0 ]] && exit 0
# The other back end: Debian's virtiofsd (QEMU 7.2's C one) serving the same read-only directory
# to QEMU microvm, with Kiln's kernel and initramfs plus an /init of our own (a second cpio
# appended: its /init replaces Kiln's) that mounts the tag and runs the same timed steps.
command -v qemu-system-x86_64 >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y qemu-system-x86 >&2
VIRTIOFSD=${VIRTIOFSD:-/usr/lib/qemu/virtiofsd}
kernel=${KILN_KERNEL:-/var/cache/kiln/kernel/vmlinux}
initrd=${KILN_INITRD:-/var/cache/kiln/initramfs/initramfs.cpio}
mkdir -p "$work/qinit"
cat >"$work/qinit/init" <<EOF
#!/bin/sh
m() { n=\$1; shift; read u x </proc/uptime; echo "B \$n \$u"; "\$@"; r=\$?; read u x </proc/uptime; echo "E \$n \$u \$r"; }
mount -t proc proc /proc; mkdir -p /src
mount -t virtiofs src /src || echo "virtiofs mount failed"
m empty true
m share-read sha256sum /src/big.bin
m share-find-stat sh -c 'find /src/tree -exec stat -c "%s %Y" {} + | wc -l'
m share-checkout-find-stat sh -c 'find /src/checkout -exec stat -c "%s %Y" {} + | wc -l'
echo volbench-done
reboot -f
EOF
chmod 755 "$work/qinit/init"
(cd "$work/qinit" && echo init | cpio -o -H newc 2>/dev/null) | cat "$initrd" - >"$work/initrd.cpio"
"$VIRTIOFSD" --socket-path="$work/vfs.sock" -o source="$work/ro" -o cache=auto -o sandbox=chroot \
    >"$work/virtiofsd.log" 2>&1 &
vfs=$!
for _ in $(seq 50); do [[ -S $work/vfs.sock ]] && break; sleep 0.1; done
append="console=ttyS0 reboot=k panic=-1 kiln_emulated_cpl0 clearcpuid=xsave,popcnt,smap,fsgsbase,erms,fsrm noinvpcid nopcid"
echo "qemu: $(qemu-system-x86_64 --version | head -1); virtiofsd: $VIRTIOFSD"
set +e
timeout "${QEMU_TIMEOUT:-1800}" qemu-system-x86_64 -M microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off \
    -global virtio-mmio.force-legacy=false -enable-kvm -cpu host,-arch-capabilities -m 256 -smp 1 -nodefaults -no-user-config -nographic \
    -serial stdio -no-reboot -kernel "$kernel" -initrd "$work/initrd.cpio" -append "$append" \
    -object memory-backend-memfd,id=mem,size=256M,share=on -numa node,memdev=mem \
    -chardev socket,id=vfs,path="$work/vfs.sock" -device vhost-user-fs-device,chardev=vfs,tag=src \
    >"$work/qemu.log" 2>&1
echo "qemu: exit $?"
set -e
kill "$vfs" 2>/dev/null || true; wait "$vfs" 2>/dev/null || true
grep -a -e '^[BE] ' -e virtiofs -e volbench-done -e '^[0-9a-f]\{64\}' -e '^ *[0-9]\+$' "$work/qemu.log" || tail -20 "$work/qemu.log"
echo "virtiofsd log:"; tail -5 "$work/virtiofsd.log"
