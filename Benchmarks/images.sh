#!/usr/bin/env bash
# OCI images (docs/benchmarks.md, "Images"): pull + root-disk build of a Debian image with python3,
# Kiln cold and warm against a peer pipeline (skopeo copy + umoci unpack + mkfs.ext4), conversion
# throughput, disk used per image, and `kiln run --image REF -- echo hi` to its first output byte
# against `kiln run -- echo hi` (the default image), all in one run, loopback registry only.
#   Benchmarks/images.sh [--rounds N] [--runs M]     (defaults 3 and 5; about 10 minutes here)
# Needs root, /dev/kvm, Kiln's cached kernel, initramfs, agent disk and Debian image in
# /var/cache/kiln (Scripts/setup.sh; rootfs/build-debian-image.sh), and docker-registry, skopeo,
# umoci, debugfs. Everything else lives in a temporary directory removed at the end; the results
# go to Benchmarks/results/images-<date>-<HHMM>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
kiln=.build/release/kiln
[[ -x $kiln && -x ${kiln}-vmm ]] || { swift build -c release --product kiln >&2 && swift build -c release --product kiln-vmm >&2; }
for tool in docker-registry skopeo umoci debugfs mkfs.ext4; do
    command -v "$tool" >/dev/null || { echo "images.sh: $tool is missing (Scripts/setup.sh installs it)" >&2; exit 1; }
done
exec python3 -c "$(cat <<'PY'
import hashlib, json, os, resource, shutil, statistics, subprocess, sys, tempfile, time, select

args = sys.argv[1:]
rounds = int(args[args.index("--rounds") + 1]) if "--rounds" in args else 3
runs = int(args[args.index("--runs") + 1]) if "--runs" in args else 5
kiln = os.path.abspath(".build/release/kiln")
cache = "/var/cache/kiln"
debian = os.path.realpath(cache + "/images/debian.ext4")
work = tempfile.mkdtemp(prefix="kiln-images-bench-", dir="/var/tmp")
started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
MB = 1e6

def log(*a): print("images.sh:", *a, file=sys.stderr, flush=True)

last_cpu = 0.0  # user+system seconds of the last sh() child: steadier than wall time on a loaded host
def children_cpu():
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime

def sh(argv, env=None, **kw):
    global last_cpu
    t = time.monotonic(); c = children_cpu()
    r = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    dt = time.monotonic() - t
    last_cpu = children_cpu() - c
    if r.returncode != 0:
        raise SystemExit(f"images.sh: {' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()[-600:]}")
    return dt, r.stdout

def du(*paths):  # allocated bytes (sparse-aware), as du counts them
    return int(subprocess.run(["du", "-s", "-B1", "-c", *paths], stdout=subprocess.PIPE, text=True).stdout.split()[-2])

def kenv(dir, trace=False):
    e = dict(os.environ, KILN_CACHE_DIR=dir)
    if trace: e["KILN_BOOT_TRACE"] = "1"
    return e

registry = None
try:
    # --- the image: the Debian rootfs Kiln builds, as one gzip layer of an OCI layout (not timed)
    rootfs = work + "/src/rootfs"
    os.makedirs(rootfs)
    sh(["debugfs", "-R", f"rdump / {rootfs}", debian])
    shutil.rmtree(rootfs + "/lost+found", ignore_errors=True)
    layout = work + "/layout"
    os.makedirs(layout + "/blobs/sha256")
    tarpath = work + "/src/layer.tar"
    sh(["tar", "--numeric-owner", "--owner=0", "--group=0", "--sort=name", "-C", rootfs, "-cf", tarpath, "."])
    def digest(path):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""): h.update(b)
        return h.hexdigest()
    diff_id = digest(tarpath)
    layer_bytes = os.path.getsize(tarpath)
    sh(["gzip", "-6", "-n", tarpath])
    gz = tarpath + ".gz"
    gz_hex = digest(gz); gz_bytes = os.path.getsize(gz)
    os.rename(gz, f"{layout}/blobs/sha256/{gz_hex}")
    shutil.rmtree(work + "/src")
    def blob(obj):
        data = json.dumps(obj, separators=(",", ":")).encode()
        hx = hashlib.sha256(data).hexdigest()
        open(f"{layout}/blobs/sha256/{hx}", "wb").write(data)
        return {"digest": "sha256:" + hx, "size": len(data)}
    config = blob({"architecture": "amd64", "os": "linux",
                   "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/usr/bin/python3"]},
                   "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id]}})
    manifest = blob({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                     "config": dict(config, mediaType="application/vnd.oci.image.config.v1+json"),
                     "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + gz_hex, "size": gz_bytes}]})
    json.dump({"schemaVersion": 2, "manifests": [dict(manifest, mediaType="application/vnd.oci.image.manifest.v1+json",
               annotations={"org.opencontainers.image.ref.name": "bench"})]}, open(layout + "/index.json", "w"))
    json.dump({"imageLayoutVersion": "1.0.0"}, open(layout + "/oci-layout", "w"))
    registry = work + "/registry"
    hostport = sh(["Tests/images/registry.sh", "start", registry, "--owner", str(os.getpid())])[1].strip()
    ref = f"{hostport}/bench/debian-python:1"
    sh(["Tests/images/push.sh", layout, "bench", hostport, "bench/debian-python:1"])
    shutil.rmtree(layout)
    log(f"image {ref}: layer {layer_bytes/MB:.1f} MB uncompressed, {gz_bytes/MB:.1f} MB gzip")

    # --- pull + disk: Kiln cold, Kiln warm, peer cold; alternating rounds
    res = {"kiln_cold_pull": [], "kiln_cold_disk": [], "kiln_warm_pull": [], "kiln_warm_disk": [],
           "peer_copy": [], "peer_unpack": [], "peer_mkfs": []}
    cpu = {k: [] for k in res}
    sizes = {}
    for r in range(rounds):
        c = f"{work}/kiln{r}"
        os.makedirs(c)
        tp, _ = sh([kiln, "image", "pull", ref], env=kenv(c))
        cpu["kiln_cold_pull"].append(last_cpu)
        td, out = sh([kiln, "image", "disk", ref], env=kenv(c))
        disk = out.strip()
        cpu["kiln_cold_disk"].append(last_cpu)
        res["kiln_cold_pull"].append(tp); res["kiln_cold_disk"].append(td)
        tp, _ = sh([kiln, "image", "pull", ref], env=kenv(c))
        cpu["kiln_warm_pull"].append(last_cpu)
        td, out2 = sh([kiln, "image", "disk", ref], env=kenv(c))
        cpu["kiln_warm_disk"].append(last_cpu)
        assert out2.strip() == disk
        res["kiln_warm_pull"].append(tp); res["kiln_warm_disk"].append(td)
        disk_size = os.path.getsize(disk)
        p = f"{work}/peer{r}"
        os.makedirs(p)
        t1, _ = sh(["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{p}/oci:bench"])
        cpu["peer_copy"].append(last_cpu)
        t2, _ = sh(["umoci", "unpack", "--image", f"{p}/oci:bench", f"{p}/bundle"])
        cpu["peer_unpack"].append(last_cpu)
        t = time.monotonic(); c0 = children_cpu()
        # rootfs/image-common.sh make_ext4's flags, at the size Kiln chose for the same tree.
        sh(["truncate", "-s", str(disk_size), f"{p}/root.ext4"])
        sh(["mkfs.ext4", "-q", "-F", "-L", "kiln-root", "-O", "^has_journal", "-E",
            "lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0", "-d", f"{p}/bundle/rootfs", f"{p}/root.ext4"])
        t3 = time.monotonic() - t
        cpu["peer_mkfs"].append(children_cpu() - c0)
        res["peer_copy"].append(t1); res["peer_unpack"].append(t2); res["peer_mkfs"].append(t3)
        if r == 0:
            sizes = {"kiln_store_blobs": du(c + "/oci/blobs"), "kiln_root_disk": du(disk), "kiln_total": du(c + "/oci"),
                     "kiln_root_disk_apparent": disk_size,
                     "peer_oci_dir": du(p + "/oci"), "peer_ext4": du(p + "/root.ext4"), "peer_bundle": du(p + "/bundle"),
                     "peer_total_kept": du(p + "/oci", p + "/root.ext4")}
            keep = c
        else:
            shutil.rmtree(c)
        shutil.rmtree(p)
        log(f"round {r+1}: kiln cold {res['kiln_cold_pull'][-1]:.2f}+{res['kiln_cold_disk'][-1]:.2f} s, "
            f"warm {res['kiln_warm_pull'][-1]:.2f}+{res['kiln_warm_disk'][-1]:.2f} s, "
            f"peer {t1:.2f}+{t2:.2f}+{t3:.2f} s, load {os.getloadavg()[0]:.2f}")

    # --- kiln run: a cache holding this run's image store and templates, Kiln's images linked in
    rc = keep
    for name in ["kernel", "initramfs", "images", "agent-disk"]:
        os.symlink(f"{cache}/{name}", f"{rc}/{name}")
    def run(argv):
        """Spawn to first stdout byte and to exit, and the trace marks relative to the spawn."""
        t0 = time.monotonic_ns()
        proc = subprocess.Popen(argv, env=kenv(rc, trace=True), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        first = None; out = b""; err = b""
        fds = {proc.stdout.fileno(): "o", proc.stderr.fileno(): "e"}
        while fds:
            ready, _, _ = select.select(list(fds), [], [], 300)
            if not ready: proc.kill(); raise SystemExit("images.sh: kiln run timed out")
            for fd in ready:
                b = os.read(fd, 65536)
                if not b: del fds[fd]; continue
                if fds[fd] == "o":
                    if first is None: first = time.monotonic_ns()
                    out += b
                else: err += b
        proc.wait(); end = time.monotonic_ns()
        if proc.returncode != 0: raise SystemExit(f"images.sh: {' '.join(argv)} exited {proc.returncode}: {err.decode()[-600:]}")
        marks = {}
        for line in err.decode(errors="replace").splitlines():
            if line.startswith("kiln-trace: "):
                _, ev, ns = line.split()
                marks.setdefault(ev, (int(ns) - t0) / 1e9)
        return {"first_byte_s": None if first is None else (first - t0) / 1e9, "exit_s": (end - t0) / 1e9,
                "output": out.decode(errors="replace").strip(), "marks": marks}
    image_cmd = [kiln, "run", "--image", ref, "--"]
    default_cmd = [kiln, "run", "--"]
    first_use = {"image": run(image_cmd + ["true"]), "default": run(default_cmd + ["true"])}
    log(f"first use (template boot): image {first_use['image']['exit_s']:.1f} s, default {first_use['default']['exit_s']:.1f} s")
    warm_runs = {"image": [], "default": []}
    for i in range(runs):
        for kind, cmd in (("image", image_cmd), ("default", default_cmd)):
            r = run(cmd + ["echo", "hi"])
            assert r["output"] == "hi", r["output"]
            warm_runs[kind].append(r)
        log(f"run {i+1}: image {warm_runs['image'][-1]['first_byte_s']:.2f} s, default {warm_runs['default'][-1]['first_byte_s']:.2f} s to 'hi'")
    # Host-side cost of resolving REF to its root disk on every run: the warm `kiln image disk`.
    med = lambda xs: statistics.median(xs)

    def split(rs):  # medians of the phases between trace marks
        keys = ["restore-start", "restored", "agent-ready", "command-started"]
        out = {}
        for k in keys:
            v = [r["marks"][k] for r in rs if k in r["marks"]]
            if v: out["to_" + k] = med(v)
        out["to_first_byte"] = med([r["first_byte_s"] for r in rs]); out["to_exit"] = med([r["exit_s"] for r in rs])
        return out
    m = {k: med(v) for k, v in res.items()}
    mc = {k: med(v) for k, v in cpu.items()}
    kiln_cold = m["kiln_cold_pull"] + m["kiln_cold_disk"]
    kiln_warm = m["kiln_warm_pull"] + m["kiln_warm_disk"]
    peer = m["peer_copy"] + m["peer_unpack"] + m["peer_mkfs"]
    summary = {
        "kiln_cold_s": kiln_cold, "kiln_warm_s": kiln_warm, "peer_cold_s": peer,
        "ratio_kiln_cold_over_peer": kiln_cold / peer, "ratio_kiln_warm_over_peer": kiln_warm / peer,
        "ratio_pull_over_skopeo": m["kiln_cold_pull"] / m["peer_copy"],
        "ratio_disk_over_unpack_mkfs": m["kiln_cold_disk"] / (m["peer_unpack"] + m["peer_mkfs"]),
        "kiln_disk_build_MB_per_s": layer_bytes / MB / m["kiln_cold_disk"],
        "peer_unpack_mkfs_MB_per_s": layer_bytes / MB / (m["peer_unpack"] + m["peer_mkfs"]),
        "run_image": split(warm_runs["image"]), "run_default": split(warm_runs["default"]),
    }
    result = {"benchmark": "images", "started_utc": started, "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
              "rounds": rounds, "runs": runs, "load_average_end": os.getloadavg(), "nproc": os.cpu_count(),
              "image": {"reference": ref, "source": debian, "layer_uncompressed_bytes": layer_bytes, "layer_gzip_bytes": gz_bytes},
              "medians_s": m, "samples_s": res, "cpu_medians_s": mc, "cpu_samples_s": cpu, "disk_bytes": sizes, "summary": summary,
              "first_use": first_use, "warm_runs": warm_runs}
    os.makedirs("Benchmarks/results", exist_ok=True)
    path = time.strftime("Benchmarks/results/images-%Y-%m-%d-%H%M.json", time.gmtime())
    json.dump(result, open(path, "w"), indent=1)
    f = lambda x: f"{x:.2f}"
    print(f"| pull + root disk, {layer_bytes/MB:.0f} MB layer ({gz_bytes/MB:.0f} MB gzip), median of {rounds} | seconds | Kiln / peer |")
    print("|---|---:|---:|")
    print(f"| Kiln cold: `kiln image pull` + `kiln image disk` | {f(m['kiln_cold_pull'])} + {f(m['kiln_cold_disk'])} = {f(kiln_cold)} | {kiln_cold/peer:.2f} |")
    print(f"| Kiln warm (both again) | {f(m['kiln_warm_pull'])} + {f(m['kiln_warm_disk'])} = {f(kiln_warm)} | {kiln_warm/peer:.3f} |")
    print(f"| peer cold: skopeo copy + umoci unpack + mkfs.ext4 -d | {f(m['peer_copy'])} + {f(m['peer_unpack'])} + {f(m['peer_mkfs'])} = {f(peer)} | 1 |")
    print(f"| conversion MB/s (uncompressed layer / disk build) | Kiln {summary['kiln_disk_build_MB_per_s']:.1f}, peer unpack+mkfs {summary['peer_unpack_mkfs_MB_per_s']:.1f} | |")
    s = sizes
    print(f"| disk used (du) | Kiln blobs {s['kiln_store_blobs']/MB:.0f} MB + disk {s['kiln_root_disk']/MB:.0f} MB = {s['kiln_total']/MB:.0f} MB; "
          f"peer OCI {s['peer_oci_dir']/MB:.0f} MB + ext4 {s['peer_ext4']/MB:.0f} MB = {s['peer_total_kept']/MB:.0f} MB (bundle {s['peer_bundle']/MB:.0f} MB) | |")
    print(f"| host CPU (user+sys), medians | Kiln cold {f(mc['kiln_cold_pull'])} + {f(mc['kiln_cold_disk'])}, warm {f(mc['kiln_warm_pull'])} + {f(mc['kiln_warm_disk'])}; "
          f"peer {f(mc['peer_copy'])} + {f(mc['peer_unpack'])} + {f(mc['peer_mkfs'])} | |")
    ri, rd = summary["run_image"], summary["run_default"]
    print(f"| `kiln run --image REF -- echo hi` to 'hi', median of {runs} | {f(ri['to_first_byte'])} (exit {f(ri['to_exit'])}) | vs default {f(rd['to_first_byte'])} (exit {f(rd['to_exit'])}) |")
    print(json.dumps({"run_image": ri, "run_default": rd, "first_use_exit_s": {k: v["exit_s"] for k, v in first_use.items()}}))
    log("wrote", path)
finally:
    if registry: subprocess.run(["Tests/images/registry.sh", "stop", registry])
    shutil.rmtree(work, ignore_errors=True)
PY
)" "$@"
