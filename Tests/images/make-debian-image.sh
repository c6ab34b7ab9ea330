#!/usr/bin/env bash
# An OCI image of Debian minbase with python3, for the end-to-end tests (Tests/KilnTests/OCIRunTests.swift):
#   Tests/images/make-debian-image.sh     -> last stdout line: an OCI layout with the tag debian-python
# Its files are those of Kiln's Debian image (rootfs/build-debian-image.sh, built here when the
# cache has none: minutes, from the Debian mirror), less Kiln's agent, so that it is an image that
# knows nothing of Kiln, as one from a registry. Cached under
# ${KILN_CACHE_DIR:-/var/cache/kiln}/test-images/<key>/oci, keyed by the Debian image file and
# this script, so CI pays the repack (a minute) once.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${KILN_CACHE_DIR:-/var/cache/kiln}
disk=$cache/images/debian.ext4
if [[ ! -e $disk ]]; then
    "$here/../../rootfs/build-debian-image.sh" >/dev/null
fi
disk=$(readlink -f "$disk")
key=$( { stat -c '%n %s %Y' "$disk"; cat "${BASH_SOURCE[0]}"; } | sha256sum | cut -c1-16)
out=$cache/test-images/$key
if [[ -f $out/done ]]; then echo "$out/oci"; exit 0; fi
rm -rf "$out"; mkdir -p "$out"
stage=$out/stage
mkdir "$stage"
# rdump keeps owners and modes (run as root); it writes the disk's / as stage/<nothing>: dump
# each top-level entry instead.
for entry in $(debugfs -R 'ls -p /' "$disk" 2>/dev/null | awk -F/ '$6 != "." && $6 != ".." && $6 != "" && $6 != "lost+found" {print $6}'); do
    debugfs -R "rdump /$entry $stage" "$disk" >/dev/null 2>&1
done
[[ -x $stage/usr/bin/python3 ]] || { echo "make-debian-image.sh: no python3 in $disk" >&2; exit 1; }
rm -f "$stage/sbin/kiln-agent" "$stage/usr/sbin/kiln-agent"
layout=$out/oci
umoci init --layout "$layout"
umoci new --image "$layout:debian-python"
umoci unpack --image "$layout:debian-python" "$out/bundle" >/dev/null
cp -a "$stage/." "$out/bundle/rootfs/"
rm -rf "$stage"
umoci repack --image "$layout:debian-python" "$out/bundle" >/dev/null
rm -rf "$out/bundle"
umoci config --image "$layout:debian-python" --os linux --architecture amd64 \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --config.cmd /usr/bin/python3
touch "$out/done"
echo "$layout"
