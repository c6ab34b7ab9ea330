#!/usr/bin/env python3
"""Where `kiln run -- true` from the template spends its time (KILN_BOOT_TRACE=1 marks):
process start to `agent-ready`, to `sandbox-restored` (clock and entropy set), to `command-exited`,
and the whole run, as medians of N runs. Pass two kiln binaries to compare a build with another
in the same run (interleaved); each gets its own cache directory (kernel and images linked from the shared
cache, templates private), so the two never rebuild each other's template.

    Benchmarks/restore-trace.py [-n 5] [--memory MiB] [--shared-cache] KILN[:IMAGE] [OTHER_KILN[:IMAGE]]

(`--memory` runs `kiln run --memory MiB`, a template of its own; `--shared-cache` uses
KILN_CACHE_DIR or /var/cache/kiln as it is, templates included, for a single build.)

(`:IMAGE` runs that build with `--image IMAGE`, e.g. to compare guest agents.)
"""
import argparse, os, statistics, subprocess, sys, tempfile, time

MEMORY = []

def run_once(spec, cache, first=False):
    kiln, _, image = spec.partition(":")
    env = dict(os.environ, KILN_BOOT_TRACE="1", KILN_CACHE_DIR=cache)
    start = time.monotonic()
    p = subprocess.run([kiln, "run"] + (["--image", image] if image else []) + ["--", "true"], env=env, capture_output=True, text=True, timeout=600)
    total = time.monotonic() - start
    if p.returncode != 0:
        sys.exit(f"{kiln}: exit {p.returncode}: {p.stderr.strip()[-400:]}")
    if first:
        return None
    marks = {}
    for line in p.stderr.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "kiln-trace:":
            marks.setdefault(parts[1], int(parts[2]))  # the first: kiln's own process-start
    t0 = marks["process-start"]
    ms = lambda m: (marks[m] - t0) / 1e6
    return ms("agent-ready"), ms("sandbox-restored"), ms("command-exited"), total * 1e3

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--memory", type=int)
    ap.add_argument("--shared-cache", action="store_true")
    ap.add_argument("kilns", nargs="+")
    a = ap.parse_args()
    if a.memory:
        MEMORY.extend(["--memory", str(a.memory)])
    shared = os.environ.get("KILN_CACHE_DIR", "/var/cache/kiln")
    caches = []
    for kiln in a.kilns:
        if a.shared_cache:
            run_once(kiln, shared, first=True)
            caches.append(shared)
            continue
        cache = tempfile.mkdtemp(prefix="kiln-trace-cache-")
        for d in ("kernel", "images", "initramfs"):
            os.symlink(os.path.join(shared, d), os.path.join(cache, d))
        run_once(kiln, cache, first=True)  # makes the template (a boot) on first use
        caches.append(cache)
    # Interleaved, so that both builds see the same host load.
    rows = {k: [] for k in a.kilns}
    for _ in range(a.n):
        for kiln, cache in zip(a.kilns, caches):
            rows[kiln].append(run_once(kiln, cache))
    for kiln, cache in zip(a.kilns, caches):
        med = [statistics.median(c) for c in zip(*rows[kiln])]
        print(f"{kiln}: median of {a.n}: start->agent-ready {med[0]:.0f} ms, start->sandbox-restored {med[1]:.0f} ms, "
              f"start->command-exited {med[2]:.0f} ms, total {med[3]:.0f} ms")
        print("  runs (ready/restored/exited/total ms): " + "; ".join("%.0f/%.0f/%.0f/%.0f" % r for r in rows[kiln]))
        if cache != shared:
            subprocess.run(["rm", "-rf", cache])

main()
