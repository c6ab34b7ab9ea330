#!/usr/bin/env bash
# Test images, made with umoci into one OCI image layout:
#   Tests/images/make-images.sh OUT     # writes OUT/oci (an OCI layout) with these tags:
#     scratch         one layer: /bin/busybox (static) and /bin/sh -> busybox, nothing else
#     layered         two layers; the upper deletes /etc/lower-only and /data/gone/, replaces
#                     /etc/replaced and /data/swap (a file becomes a directory), adds /etc/upper-only
#     config          scratch plus Entrypoint, Cmd, Env, WorkingDir (/work), User (1000:1000)
#     scratch-arm64   scratch's layer with an arm64 configuration (for the index)
#     multi           an image index: arm64 first, then linux/amd64 (scratch)
# and archives of them, for import: OUT/config-docker.tar (`docker save` form, by skopeo's
# docker-archive, tagged kiln-test/saved:v1), OUT/layered-oci.tar (an OCI layout tar, by skopeo's
# oci-archive) and OUT/layout.tar.gz (the whole layout, tar and gzip).
# Push one with push.sh beside this script. The layout is rebuilt each run (a few seconds).
set -euo pipefail
out=${1:?OUT directory}
mkdir -p "$out"; out=$(cd "$out" && pwd)
busybox=/bin/busybox
[[ -x $busybox ]] || { echo "make-images.sh: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }
layout=$out/oci
rm -rf "$layout" "$out"/bundle-*
umoci init --layout "$layout"

# scratch: one static binary.
umoci new --image "$layout:scratch"
umoci unpack --image "$layout:scratch" "$out/bundle-scratch" >/dev/null
root=$out/bundle-scratch/rootfs
mkdir -p "$root/bin"
cp "$busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
umoci repack --image "$layout:scratch" "$out/bundle-scratch" >/dev/null
umoci config --image "$layout:scratch" --os linux --architecture amd64 --config.cmd /bin/sh

# layered: a lower layer, then an upper one that deletes and replaces.
umoci new --image "$layout:layered"
umoci unpack --image "$layout:layered" "$out/bundle-layered" >/dev/null
root=$out/bundle-layered/rootfs
mkdir -p "$root/bin" "$root/etc" "$root/data/gone/sub"
cp "$busybox" "$root/bin/busybox"
echo lower > "$root/etc/lower-only"
echo lower > "$root/etc/replaced"
echo lower > "$root/etc/kept"
echo lower > "$root/data/gone/sub/file"
echo lower > "$root/data/swap"
umoci repack --image "$layout:layered" "$out/bundle-layered" >/dev/null
rm -rf "$out/bundle-layered"
umoci unpack --image "$layout:layered" "$out/bundle-layered" >/dev/null
root=$out/bundle-layered/rootfs
rm "$root/etc/lower-only"
echo upper > "$root/etc/replaced"
echo upper > "$root/etc/upper-only"
rm -rf "$root/data/gone"
rm "$root/data/swap"; mkdir "$root/data/swap"; echo upper > "$root/data/swap/inside"
umoci repack --image "$layout:layered" "$out/bundle-layered" >/dev/null
umoci config --image "$layout:layered" --os linux --architecture amd64

# config: what a container of the image runs, and how.
umoci new --image "$layout:config"
umoci unpack --image "$layout:config" "$out/bundle-config" >/dev/null
root=$out/bundle-config/rootfs
mkdir -p "$root/bin" "$root/work" "$root/etc"
cp "$busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
echo 'app:x:1000:1000:app:/work:/bin/sh' >> "$root/etc/passwd"
printf 'root:x:0:\napp:x:1000:\n' > "$root/etc/group"
chown 1000:1000 "$root/work"
umoci repack --image "$layout:config" "$out/bundle-config" >/dev/null
umoci config --image "$layout:config" --os linux --architecture amd64 \
    --config.entrypoint /bin/busybox --config.entrypoint echo \
    --config.cmd hello --config.cmd from-config \
    --config.env KILN_TEST=yes --config.env PATH=/bin \
    --config.workingdir /work --config.user 1000:1000

# scratch-arm64 and the index `multi` (arm64 listed first, so that choosing amd64 is a choice).
umoci config --image "$layout:scratch" --tag scratch-arm64 --architecture arm64
python3 - "$layout" <<'PY'
import hashlib, json, os, sys
layout = sys.argv[1]
with open(os.path.join(layout, "index.json")) as f:
    index = json.load(f)
by_tag = {m.get("annotations", {}).get("org.opencontainers.image.ref.name"): m for m in index["manifests"]}
def plat(d, arch):
    d = {k: v for k, v in d.items() if k != "annotations"}
    d["platform"] = {"architecture": arch, "os": "linux"}
    return d
nested = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
          "manifests": [plat(by_tag["scratch-arm64"], "arm64"), plat(by_tag["scratch"], "amd64")]}
body = json.dumps(nested).encode()
digest = hashlib.sha256(body).hexdigest()
with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as f:
    f.write(body)
index["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": "sha256:" + digest,
                           "size": len(body), "annotations": {"org.opencontainers.image.ref.name": "multi"}})
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump(index, f)
PY
rm -rf "$out"/bundle-* "$out"/*.tar "$out"/*.tar.gz
skopeo --insecure-policy copy -q "oci:$layout:config" "docker-archive:$out/config-docker.tar:kiln-test/saved:v1"
skopeo --insecure-policy copy -q "oci:$layout:layered" "oci-archive:$out/layered-oci.tar:layered"
tar -C "$layout" -czf "$out/layout.tar.gz" .
echo "$layout"
