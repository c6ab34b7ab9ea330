#!/usr/bin/env bash
# Volume (virtio-fs) benchmarks (docs/benchmarks.md, "Volumes"), as root:
#   1. a 100 MiB file read through a read-only share (sha256sum in the guest), against the same
#      file on the guest's own disk (its write layer), and its checksum against the host's
#   2. a tree of 10,000 small files: find + cat through the share, checksum against the host's
#   3. a 64 MiB sequential write through a read-write share
# Each row is the wall time of `kiln run` minus that of `kiln run -- true` with the same
# volumes (the restore and mount), so the numbers are the guest's work; and the host CPU of
# the whole run (kiln + kiln-vmm, from /proc/self's children times).
#   Benchmarks/volumes.sh            KILN=.build/debug/kiln Benchmarks/volumes.sh   (no release build)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${KILN:-} ]]; then
    echo "volumes.sh: building (release)" >&2
    swift build -c release -j 2 --product kiln >&2
    swift build -c release -j 2 --product kiln-vmm >&2
    KILN=.build/release/kiln
fi
work=$(mktemp -d /tmp/kiln-volume-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/ro/tree" "$work/rw"
head -c $((100 << 20)) /dev/urandom >"$work/ro/big.bin"
python3 - "$work/ro/tree" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(100):
    os.makedirs(f"{root}/d{d:03}", exist_ok=True)
    for f in range(100):
        with open(f"{root}/d{d:03}/f{f:03}", "wb") as out:
            out.write(os.urandom(64 + (d * 100 + f) % 960))
PY
chown -R 1000:1000 "$work/rw"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"

run() {  # run LABEL ARGS...: prints LABEL, wall ms, host CPU s (kiln and its VMM), the command's output
    local label=$1; shift
    python3 - "$label" "$KILN" run "$@" <<'PY'
import resource, subprocess, sys, time
label, argv = sys.argv[1], sys.argv[2:]
t = time.monotonic()
p = subprocess.run(argv, capture_output=True, text=True)
wall = (time.monotonic() - t) * 1000
r = resource.getrusage(resource.RUSAGE_CHILDREN)
if p.returncode != 0:
    sys.exit(f"{label}: exit {p.returncode}: {p.stderr.strip()[-300:]}")
print(f"{label} wall_ms={wall:.0f} host_cpu_s={r.ru_utime + r.ru_stime:.2f} out={p.stdout.strip()[:80]}")
PY
}

vols=(-v "$work/ro:/src:ro" -v "$work/rw:/out")
host_big=$(sha256sum <"$work/ro/big.bin" | cut -d' ' -f1)
host_tree=$(cd "$work/ro/tree" && find . -type f | LC_ALL=C sort | xargs cat | sha256sum | cut -d' ' -f1)
"$KILN" run -- true >/dev/null # the template exists
run baseline "${vols[@]}" -- true
run read-100MiB "${vols[@]}" -- sha256sum /src/big.bin
run tree-10000 "${vols[@]}" -- sh -c 'cd /src/tree && find . -type f | LC_ALL=C sort | xargs cat | sha256sum'
run write-64MiB "${vols[@]}" -- sh -c 'head -c 67108864 /dev/zero > /out/w.bin && sync'
run disk-write-64MiB -- sh -c 'head -c 67108864 /dev/zero > /root/w.bin && sync'
echo "host checksums: big $host_big tree $host_tree"
