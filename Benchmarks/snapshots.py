#!/usr/bin/env python3
"""Kiln snapshot benchmark: snapshot creation, restore latency, restore vs memory size, clone RSS.

For each guest memory size (default 128 and 1024 MiB):
  1. Cold boot `kiln boot --memory M --control SOCK` of the default guest; time to KILN-INIT-READY.
  2. Make state (`echo 41 > /tmp/state; sleep 1000 &`), then `snapshot DIR` on the control socket,
     timed from sending the line to the `ok` reply (the VM is paused meanwhile). Repeated --snapshots
     times into fresh directories; the first directory is used for restores.
  3. --runs restores, one at a time: `kiln restore DIR` with KILN_BOOT_TRACE=1, the command
     `echo RDY` typed at once. Reported: process start -> first KVM_RUN (trace, CLOCK_MONOTONIC),
     spawn -> first console byte (the guest echoing input), spawn -> the `RDY` line (a command ran).
  4. Two clones restored at once and left idle 2 s: /proc/PID/smaps_rollup of each
     (Rss, Pss, Private_Dirty, Shared_Clean) - pages of the memory file both clones read are shared.

Python 3 standard library only. Writes Benchmarks/results/snapshots-<date>-<HHMM>.json and prints markdown.
"""

import argparse
import datetime
import json
import os
import platform
import re
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

TRACE_RE = re.compile(rb"kiln-trace: (\S+) (\d+)")


def log(msg):
    print(f"[snapshots.py {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class VM:
    """A kiln process with the console on pipes."""

    def __init__(self, argv, env=None):
        self.t0 = time.monotonic_ns()
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=dict(os.environ, **(env or {})))
        self.out = b""
        self.err = b""
        self.first_byte_ns = None

    def send(self, text):
        self.p.stdin.write(text.encode())
        self.p.stdin.flush()

    def pump(self, wait_s):
        r, _, _ = select.select([self.p.stdout, self.p.stderr], [], [], wait_s)
        for f in r:
            b = os.read(f.fileno(), 65536)
            if f is self.p.stdout:
                if b and self.first_byte_ns is None:
                    self.first_byte_ns = time.monotonic_ns()
                self.out += b
            else:
                self.err += b
        return bool(r)

    def wait_for(self, marker, timeout):
        end = time.monotonic() + timeout
        while marker not in self.out:
            if time.monotonic() > end or self.p.poll() is not None:
                raise RuntimeError(f"no {marker!r} after {timeout}s; stderr: {self.err.decode(errors='replace')[-500:]}")
            self.pump(0.2)
        return time.monotonic_ns()

    def trace(self):
        self.pump(0)
        return {m.group(1).decode(): int(m.group(2)) for m in TRACE_RE.finditer(self.err)}

    def finish(self, timeout=60):
        try:
            self.send("reboot -f\n")
            self.p.wait(timeout=timeout)
        except Exception:
            self.p.kill()
            self.p.wait()
        return self.p.returncode


def control(path, line, timeout=600):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(path)
    s.sendall((line + "\n").encode())
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        reply += chunk
    s.close()
    return reply.decode().strip()


def smaps_rollup(pid):
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return fields


def ms(ns):
    return ns / 1e6


def bench_size(kiln, memory, runs, snapshots, workdir):
    result = {"memory_mib": memory}
    ctl = os.path.join(workdir, f"control-{memory}.sock")
    log(f"{memory} MiB: cold boot")
    vm = VM([kiln, "boot", "--no-jail", "--memory", str(memory), "--control", ctl])
    ready = vm.wait_for(b"KILN-INIT-READY", 600)
    result["cold_boot_ms"] = ms(ready - vm.t0)
    vm.send('echo 41 > /tmp/state; sleep 1000 & echo STATE-""MADE\n')
    vm.wait_for(b"STATE-MADE\r\n", 120)
    times, replies, dirs = [], [], []
    for i in range(snapshots):
        d = os.path.join(workdir, f"snap-{memory}-{i}")
        t = time.monotonic_ns()
        reply = control(ctl, f"snapshot {d}")
        times.append(ms(time.monotonic_ns() - t))
        if not reply.startswith("ok"):
            raise RuntimeError(f"snapshot failed: {reply}")
        replies.append(reply)
        dirs.append(d)
    result["snapshot_ms"] = times
    result["snapshot_reply"] = replies[0]
    du = subprocess.run(["du", "-sk", dirs[0]], capture_output=True, text=True).stdout.split()[0]
    result["snapshot_disk_kib"] = int(du)
    vm.finish()
    for d in dirs[1:]:
        shutil.rmtree(d, ignore_errors=True)

    snap = dirs[0]
    # Drop nothing from the page cache: restores read the memory file through it, as clones would.
    restores = []
    for i in range(runs):
        vm = VM([kiln, "restore", snap], env={"KILN_BOOT_TRACE": "1"})
        vm.send('echo R""DY\n')
        done = vm.wait_for(b"RDY\r\n", 120)
        tr = vm.trace()
        restores.append({
            "to_first_kvm_run_ms": ms(tr["first-kvm-run"] - tr["process-start"]) if "first-kvm-run" in tr else None,
            "spawn_to_first_kvm_run_ms": ms(tr["first-kvm-run"] - vm.t0) if "first-kvm-run" in tr else None,
            "restore_work_ms": ms(tr["restored"] - tr["restore-start"]) if "restored" in tr else None,
            "to_first_output_ms": ms(vm.first_byte_ns - vm.t0),
            "to_command_done_ms": ms(done - vm.t0),
        })
        rc = vm.finish()
        restores[-1]["exit"] = rc
    result["restores"] = restores

    log(f"{memory} MiB: two idle clones")
    clones = [VM([kiln, "restore", snap]) for _ in range(2)]
    for c in clones:
        c.send('echo R""DY\n')
    for c in clones:
        c.wait_for(b"RDY\r\n", 120)
    time.sleep(2)
    result["idle_clones"] = [smaps_rollup(c.p.pid) for c in clones]
    for c in clones:
        c.finish()
    return result


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def markdown(results, meta):
    lines = [f"Measured {meta['date']} on {meta['host']} ({meta['cpus']} CPUs, load {meta['load']}), "
             f"`{meta['kiln']}` at git {meta['git']}; medians of {meta['runs']} restores per size.", ""]
    lines.append("| guest memory | cold boot to KILN-INIT-READY | snapshot creation | restore: process start to first KVM_RUN | "
                 "restore: spawn to first console output | restore: spawn to `echo` done | memory file on disk |")
    lines.append("|---|---|---|---|---|---|---|")
    for r in results:
        rs = r["restores"]
        lines.append(f"| {r['memory_mib']} MiB | {r['cold_boot_ms'] / 1000:.1f} s | {median(r['snapshot_ms']):.1f} ms | "
                     f"{median([x['to_first_kvm_run_ms'] for x in rs]):.1f} ms | "
                     f"{median([x['to_first_output_ms'] for x in rs]):.1f} ms | "
                     f"{median([x['to_command_done_ms'] for x in rs]):.1f} ms | {r['snapshot_disk_kib'] / 1024:.1f} MiB |")
    lines.append("")
    lines.append("| guest memory | idle clone | Rss | Pss | Private_Dirty | Shared_Clean |")
    lines.append("|---|---|---|---|---|---|")
    for r in results:
        for i, c in enumerate(r["idle_clones"]):
            lines.append(f"| {r['memory_mib']} MiB | {i + 1} | {c.get('Rss', 0) / 2**20:.1f} MiB | {c.get('Pss', 0) / 2**20:.1f} MiB | "
                         f"{c.get('Private_Dirty', 0) / 2**20:.1f} MiB | {c.get('Shared_Clean', 0) / 2**20:.1f} MiB |")
    return "\n".join(lines)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiln", default=os.path.join(root, ".build/release/kiln"))
    ap.add_argument("--sizes", default="128,1024", help="guest memory sizes in MiB, comma-separated")
    ap.add_argument("--runs", type=int, default=5, help="restores per size")
    ap.add_argument("--snapshots", type=int, default=3, help="snapshots per size")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not os.path.exists(args.kiln):
        sys.exit(f"snapshots.py: {args.kiln} not found (swift build -c release --product kiln)")
    workdir = tempfile.mkdtemp(prefix="kiln-snapbench-")
    try:
        results = [bench_size(args.kiln, int(m), args.runs, args.snapshots, workdir) for m in args.sizes.split(",")]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    git = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "host": platform.release(),
            "cpus": os.cpu_count(), "load": " ".join(f"{x:.2f}" for x in os.getloadavg()), "kiln": os.path.relpath(args.kiln, root),
            "git": git, "runs": args.runs}
    path = args.json or os.path.join(root, "Benchmarks/results",
                                     "snapshots-" + datetime.datetime.now().strftime("%Y-%m-%d-%H%M") + ".json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    print(markdown(results, meta))
    log(f"raw numbers in {path}")


if __name__ == "__main__":
    main()
