#!/usr/bin/env python3
"""Kiln boot benchmark: Kiln vs QEMU microvm, same kernel, initramfs and command line.

For each run, the wall time is taken from just before the VMM process is spawned
to the moment the line KILN-INIT-READY (printed by the initramfs's /init) appears
on the VMM's stdout. Runs alternate kiln, qemu, kiln, qemu, ...

Also measured:
  * Kiln only: process start -> first KVM_RUN, from the KILN_BOOT_TRACE=1 lines
    on stderr (CLOCK_MONOTONIC ns, the clock of time.monotonic_ns()).
  * Both: RSS outside guest memory, from /proc/PID/smaps when the marker appears
    (sum of Rss: over every mapping except the anonymous mapping(s) that back
    guest RAM), plus total RSS; optionally the peak over periodic samples.

Python 3 standard library only. See docs/benchmarks.md.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import select
import statistics
import subprocess
import sys
import time

MARKER = b"KILN-INIT-READY"
CMDLINE_RE = re.compile(rb"Command line: ([^\r\n]*)")
TRACE_RE = re.compile(rb"kiln-trace: (\S+) (\d+)")
PROMPT_RE = re.compile(rb"[#$] $")  # a shell prompt at the end of the output
DEFAULT_CMDLINE = "console=ttyS0 reboot=k panic=-1"
# Mirrors HostProfile.emulatedCPL0.kernelParameters (Sources/VMM/HostProfile.swift).
# Used for QEMU only if the command line cannot be read back from a Kiln boot's console
# ("Command line: ..." in the kernel log), which is the authoritative source.
EMULATED_CPL0_PARAMS = "kiln_emulated_cpl0 clearcpuid=xsave,popcnt,smap,fsgsbase,erms,fsrm noinvpcid nopcid"
QEMU_MACHINE = "microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off"
QEMU_CPU = "host,-arch-capabilities"


def log(msg):
    print(f"[boot.py {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- /proc helpers

def read_smaps(pid):
    """Mappings of pid: list of dicts with start, end, size (bytes), rss (bytes), name, anon."""
    maps = []
    cur = None
    try:
        with open(f"/proc/{pid}/smaps", "rb") as f:
            for line in f:
                first = line.split(None, 1)[0]
                if not first.endswith(b":"):
                    # header: start-end perms offset dev inode [name]
                    parts = line.split(None, 5)
                    start, end = (int(x, 16) for x in parts[0].split(b"-"))
                    name = parts[5].strip().decode(errors="replace") if len(parts) > 5 else ""
                    cur = {"start": start, "end": end, "size": end - start, "rss": 0, "pss": 0, "dirty": 0,
                           "perms": parts[1].decode(), "name": name,
                           "inode": int(parts[4])}
                    maps.append(cur)
                elif cur is not None and first in (b"Rss:", b"Pss:", b"Private_Dirty:"):
                    kib = int(line.split()[1]) * 1024
                    if first == b"Rss:":
                        cur["rss"] = kib
                    elif first == b"Pss:":
                        cur["pss"] = kib
                    else:
                        cur["dirty"] = kib
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return maps


def rss_breakdown(pid, guest_bytes):
    """Split the RSS of pid into guest RAM and everything else.

    Guest RAM is the anonymous mapping (no file, inode 0) whose size is exactly the
    guest memory size. If no mapping has that size (e.g. a VMM that splits RAM),
    the largest anonymous mapping of at least half the guest size is used instead,
    and the result says so.
    """
    maps = read_smaps(pid)
    if maps is None:
        return None
    anon = [m for m in maps if m["inode"] == 0 and (m["name"] == "" or m["name"].startswith("[anon"))]
    guest = [m for m in anon if m["size"] == guest_bytes]
    how = "exact-size"
    if len(guest) > 1:
        # More than one candidate: the guest RAM is the one with the most resident pages.
        guest = [max(guest, key=lambda m: m["rss"])]
        how = "exact-size, most resident of several"
    if not guest:
        big = [m for m in anon if m["size"] >= guest_bytes // 2]
        guest = [max(big, key=lambda m: m["size"])] if big else []
        how = "largest-anonymous" if guest else "not-found"
    total = sum(m["rss"] for m in maps)
    guest_rss = sum(m["rss"] for m in guest)
    by_name = {}
    for m in maps:
        if m not in guest:
            key = os.path.basename(m["name"]) if m["name"].startswith("/") else (m["name"] or "[anon]")
            by_name[key] = by_name.get(key, 0) + m["rss"]
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:8]
    return {
        "total_rss_bytes": total,
        "guest_rss_bytes": guest_rss,
        "non_guest_rss_bytes": total - guest_rss,
        # context: pages written by this process alone (heap, stacks, relocated data: the
        # per-VM cost; file pages of shared libraries are clean), and the proportional share
        "non_guest_private_dirty_bytes": sum(m["dirty"] for m in maps if m not in guest),
        "non_guest_pss_bytes": sum(m["pss"] for m in maps if m not in guest),
        "guest_mapping": [f"{m['start']:x}-{m['end']:x}" for m in guest],
        "guest_mapping_found_by": how,
        "mappings": len(maps),
        "non_guest_top_kib": {k: v // 1024 for k, v in top},
    }


def status_field(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ---------------------------------------------------------------- one run

def run_once(vmm, argv, env, guest_bytes, timeout, shutdown_timeout, sample_interval):
    """Spawn argv, wait for the marker, measure, then end the VM. Returns a dict."""
    res = {"vmm": vmm, "ok": False, "error": None}
    out = bytearray()
    err = bytearray()
    t_spawn = time.monotonic_ns()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0, env=env, close_fds=True)
    pid = proc.pid
    fds = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    open_fds = set(fds)
    deadline = t_spawn + int(timeout * 1e9)
    t_marker = None
    samples = []
    next_sample = t_spawn + int(sample_interval * 1e9) if sample_interval > 0 else None

    def pump(wait_s):
        """Reads whatever is available on stdout/stderr, waiting at most wait_s."""
        if not open_fds:
            time.sleep(wait_s)
            return
        ready, _, _ = select.select(list(open_fds), [], [], max(0.0, wait_s))
        now = time.monotonic_ns()
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
            else:
                fds[fd].extend(chunk)
        return now

    # ---- boot until the marker
    while True:
        now = time.monotonic_ns()
        if now >= deadline:
            res["error"] = f"timeout: no {MARKER.decode()} within {timeout} s"
            break
        if proc.poll() is not None and not open_fds:
            res["error"] = f"exited with {proc.returncode} before {MARKER.decode()}"
            break
        wait_ns = deadline - now
        if next_sample is not None:
            wait_ns = min(wait_ns, max(0, next_sample - now))
        seen_before = len(out)
        pump(wait_ns / 1e9)
        t_read = time.monotonic_ns()
        # the marker may straddle two reads: search from a little before the new bytes
        if out.find(MARKER, max(0, seen_before - len(MARKER))) >= 0:
            t_marker = t_read
            break
        if next_sample is not None and t_read >= next_sample:
            s = rss_breakdown(pid, guest_bytes)
            if s:
                samples.append({"t_s": (t_read - t_spawn) / 1e9,
                                "non_guest_rss_bytes": s["non_guest_rss_bytes"],
                                "total_rss_bytes": s["total_rss_bytes"]})
            next_sample = t_read + int(sample_interval * 1e9)

    if t_marker is not None:
        res["boot_s"] = (t_marker - t_spawn) / 1e9
        rss = rss_breakdown(pid, guest_bytes)
        res["rss_at_marker"] = rss
        res["vm_hwm_bytes"] = status_field(pid, "VmHWM")
        if rss:
            samples.append({"t_s": res["boot_s"], "non_guest_rss_bytes": rss["non_guest_rss_bytes"],
                            "total_rss_bytes": rss["total_rss_bytes"]})

    if samples:
        res["peak_sampled_non_guest_rss_bytes"] = max(s["non_guest_rss_bytes"] for s in samples)
        res["rss_samples"] = len(samples)

    # ---- end the VM: `reboot -f` on the console once the shell prompt shows (or after
    # a few seconds), again every 10 s; kill it if it has not exited in shutdown_timeout.
    t_end_start = time.monotonic_ns()
    if t_marker is not None:
        marker_at = out.find(MARKER)
        sent = 0
        next_send = t_end_start + 5_000_000_000
        end_deadline = t_end_start + int(shutdown_timeout * 1e9)
        while proc.poll() is None and time.monotonic_ns() < end_deadline:
            now = time.monotonic_ns()
            tail = bytes(out[marker_at + len(MARKER):])
            prompt = PROMPT_RE.search(tail) is not None  # busybox sh's "~ # "
            if (sent == 0 and prompt) or now >= next_send:
                try:
                    proc.stdin.write(b"reboot -f\n")
                    proc.stdin.flush()
                except (BrokenPipeError, OSError):
                    pass
                sent += 1
                next_send = now + 10_000_000_000
            pump(0.2)
        res["reboot_sent"] = sent
    if proc.poll() is None:
        if res["error"] is None:
            res["error"] = f"did not exit within {shutdown_timeout} s of the marker; killed"
        proc.kill()
        res["killed"] = True
    proc.wait()
    t_exit = time.monotonic_ns()
    # drain what is left
    while open_fds:
        pump(0.5)
        if not select.select(list(open_fds), [], [], 0)[0]:
            break
    for f in (proc.stdin, proc.stdout, proc.stderr):
        try:
            f.close()
        except OSError:
            pass
    res["exit_code"] = proc.returncode
    if t_marker is not None:
        res["shutdown_s"] = (t_exit - t_marker) / 1e9
    if res["error"] is None and proc.returncode != 0:
        res["error"] = f"exit code {proc.returncode} after reboot -f"
    res["ok"] = res["error"] is None and t_marker is not None

    # ---- Kiln trace lines
    trace = {}
    for name, ns in TRACE_RE.findall(bytes(err)):
        trace.setdefault(name.decode(), int(ns))
    if trace:
        res["trace_ns"] = trace
        if "first-kvm-run" in trace:
            res["spawn_to_first_kvm_run_ms"] = (trace["first-kvm-run"] - t_spawn) / 1e6
            if "process-start" in trace:
                res["process_start_to_first_kvm_run_ms"] = (trace["first-kvm-run"] - trace["process-start"]) / 1e6
        if "process-start" in trace:
            res["spawn_to_process_start_ms"] = (trace["process-start"] - t_spawn) / 1e6

    m = CMDLINE_RE.search(bytes(out))
    if m:
        res["guest_cmdline"] = m.group(1).decode(errors="replace").strip()
    res["console_tail"] = bytes(out[-300:]).decode(errors="replace")
    if not res["ok"]:
        res["stdout_tail"] = bytes(out[-1500:]).decode(errors="replace")
        res["stderr_tail"] = bytes(err[-1500:]).decode(errors="replace")
    return res


# ---------------------------------------------------------------- report

def mib(b):
    return None if b is None else b / (1 << 20)


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def summarize(runs, vmm):
    ok = [r for r in runs if r["vmm"] == vmm and r["ok"]]
    s = {"runs_ok": len(ok), "runs_failed": len([r for r in runs if r["vmm"] == vmm and not r["ok"]])}
    boots = [r["boot_s"] for r in ok]
    s["boot_s"] = boots
    s["boot_median_s"] = med(boots)
    s["boot_min_s"] = min(boots) if boots else None
    s["boot_max_s"] = max(boots) if boots else None
    rss = [r.get("rss_at_marker") or {} for r in ok]
    s["non_guest_rss_median_mib"] = mib(med([x.get("non_guest_rss_bytes") for x in rss]))
    s["non_guest_private_dirty_median_mib"] = mib(med([x.get("non_guest_private_dirty_bytes") for x in rss]))
    s["non_guest_pss_median_mib"] = mib(med([x.get("non_guest_pss_bytes") for x in rss]))
    s["total_rss_median_mib"] = mib(med([x.get("total_rss_bytes") for x in rss]))
    s["guest_rss_median_mib"] = mib(med([x.get("guest_rss_bytes") for x in rss]))
    s["peak_sampled_non_guest_rss_median_mib"] = mib(med([r.get("peak_sampled_non_guest_rss_bytes") for r in ok]))
    s["vm_hwm_median_mib"] = mib(med([r.get("vm_hwm_bytes") for r in ok]))
    s["shutdown_median_s"] = med([r.get("shutdown_s") for r in ok])
    if vmm == "kiln":
        s["spawn_to_first_kvm_run_median_ms"] = med([r.get("spawn_to_first_kvm_run_ms") for r in ok])
        s["process_start_to_first_kvm_run_median_ms"] = med([r.get("process_start_to_first_kvm_run_ms") for r in ok])
        s["spawn_to_process_start_median_ms"] = med([r.get("spawn_to_process_start_ms") for r in ok])
    return s


def markdown(runs, summary):
    lines = ["## Per run", "",
             "| # | VMM | boot to KILN-INIT-READY (s) | RSS outside guest RAM (MiB) | total RSS (MiB) "
             "| peak sampled outside guest (MiB) | spawn to first KVM_RUN (ms) | process start to first KVM_RUN (ms) | exit | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        rss = r.get("rss_at_marker") or {}
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["index"], r["vmm"], fmt(r.get("boot_s"), ".2f"),
            fmt(mib(rss.get("non_guest_rss_bytes")), ".2f"), fmt(mib(rss.get("total_rss_bytes")), ".1f"),
            fmt(mib(r.get("peak_sampled_non_guest_rss_bytes")), ".2f"),
            fmt(r.get("spawn_to_first_kvm_run_ms"), ".2f"), fmt(r.get("process_start_to_first_kvm_run_ms"), ".2f"),
            r.get("exit_code"), (r.get("error") or "ok").replace("|", "/")))
    k, q = summary["kiln"], summary["qemu"]
    lines += ["", "## Medians", "",
              "| metric | Kiln | QEMU microvm |", "|---|---|---|",
              f"| boot to KILN-INIT-READY, median (s) | {fmt(k['boot_median_s'], '.2f')} | {fmt(q['boot_median_s'], '.2f')} |",
              f"| boot min / max (s) | {fmt(k['boot_min_s'], '.2f')} / {fmt(k['boot_max_s'], '.2f')} "
              f"| {fmt(q['boot_min_s'], '.2f')} / {fmt(q['boot_max_s'], '.2f')} |",
              f"| RSS outside guest RAM at marker (MiB) | {fmt(k['non_guest_rss_median_mib'], '.2f')} "
              f"| {fmt(q['non_guest_rss_median_mib'], '.2f')} |",
              f"| of which private dirty (MiB) | {fmt(k['non_guest_private_dirty_median_mib'], '.2f')} "
              f"| {fmt(q['non_guest_private_dirty_median_mib'], '.2f')} |",
              f"| PSS outside guest RAM (MiB) | {fmt(k['non_guest_pss_median_mib'], '.2f')} "
              f"| {fmt(q['non_guest_pss_median_mib'], '.2f')} |",
              f"| peak sampled RSS outside guest RAM (MiB) | {fmt(k['peak_sampled_non_guest_rss_median_mib'], '.2f')} "
              f"| {fmt(q['peak_sampled_non_guest_rss_median_mib'], '.2f')} |",
              f"| total RSS at marker (MiB) | {fmt(k['total_rss_median_mib'], '.1f')} | {fmt(q['total_rss_median_mib'], '.1f')} |",
              f"| guest RAM resident at marker (MiB) | {fmt(k['guest_rss_median_mib'], '.1f')} | {fmt(q['guest_rss_median_mib'], '.1f')} |",
              f"| spawn to first KVM_RUN (ms) | {fmt(k.get('spawn_to_first_kvm_run_median_ms'), '.2f')} | n/a |",
              f"| process start to first KVM_RUN (ms) | {fmt(k.get('process_start_to_first_kvm_run_median_ms'), '.2f')} | n/a |",
              f"| successful runs | {k['runs_ok']} of {k['runs_ok'] + k['runs_failed']} "
              f"| {q['runs_ok']} of {q['runs_ok'] + q['runs_failed']} |",
              "", f"**Boot ratio kiln/qemu (medians): {fmt(summary['ratio_kiln_over_qemu'], '.3f')}**"]
    return "\n".join(lines)


# ---------------------------------------------------------------- host facts

def host_info():
    info = {"kernel": platform.release(), "nproc": os.cpu_count(),
            "kvm_pvm": os.path.exists("/sys/module/kvm_pvm")}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info["loadavg_start"] = os.getloadavg()
    return info


def file_id(path):
    real = os.path.realpath(path)
    h = hashlib.sha256()
    with open(real, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"path": path, "realpath": real, "bytes": os.path.getsize(real), "sha256": h.hexdigest()[:16]}


def git_state(root):
    """HEAD and whether Sources/ had uncommitted changes when the benchmark ran."""
    def git(*a):
        try:
            return subprocess.run(["git", "-C", root, *a], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    return {"head": git("rev-parse", "--short", "HEAD"), "sources_dirty": bool(git("status", "--porcelain", "Sources"))}


# ---------------------------------------------------------------- main

def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser(description="Kiln vs QEMU microvm boot benchmark")
    ap.add_argument("--runs", type=int, default=5, help="runs per VMM (default 5)")
    ap.add_argument("--kiln", default=os.path.join(root, ".build/release/kiln"))
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--kernel", default="/var/cache/kiln/kernel/vmlinux")
    ap.add_argument("--initrd", default="/var/cache/kiln/initramfs/initramfs.cpio")
    ap.add_argument("--memory", type=int, default=256, help="guest MiB (default 256)")
    ap.add_argument("--cmdline", default=DEFAULT_CMDLINE, help="command line given to kiln --cmdline")
    ap.add_argument("--qemu-append", default=None,
                    help="QEMU -append; default: the command line Kiln's guest reports ('Command line:' "
                         "in its boot log), i.e. --cmdline plus the host-profile parameters")
    ap.add_argument("--qemu-machine", default=QEMU_MACHINE)
    ap.add_argument("--qemu-cpu", default=QEMU_CPU)
    ap.add_argument("--timeout", type=float, default=180, help="per-run boot timeout, s (default 180)")
    ap.add_argument("--shutdown-timeout", type=float, default=60,
                    help="seconds after the marker for the VM to exit after reboot -f (default 60)")
    ap.add_argument("--sample-interval", type=float, default=2.0,
                    help="seconds between RSS samples during boot for the peak; 0 = only at the marker")
    ap.add_argument("--only", choices=["kiln", "qemu"], help="run one VMM only")
    ap.add_argument("--json", default=None, help="output JSON path (default Benchmarks/results/boot-<date>.json)")
    args = ap.parse_args()

    for p in (args.kernel, args.initrd):
        if not os.path.exists(p):
            sys.exit(f"boot.py: {p} not found")
    if args.only != "qemu" and not os.access(args.kiln, os.X_OK):
        sys.exit(f"boot.py: kiln binary {args.kiln} not found (swift build -c release --product kiln)")

    guest_bytes = args.memory << 20
    host = host_info()
    kiln_argv = [args.kiln, "boot", "--kernel", args.kernel, "--initrd", args.initrd,
                 "--cmdline", args.cmdline, "--memory", str(args.memory), "--cpus", "1"]
    kiln_env = dict(os.environ, KILN_BOOT_TRACE="1")
    qemu_env = dict(os.environ)
    qemu_env.pop("KILN_BOOT_TRACE", None)
    fallback_append = args.cmdline + (" " + EMULATED_CPL0_PARAMS if host["kvm_pvm"] else "")
    qemu_append = args.qemu_append
    append_source = "--qemu-append" if qemu_append else None

    def qemu_argv(append):
        return [args.qemu, "-M", args.qemu_machine, "-enable-kvm", "-cpu", args.qemu_cpu,
                "-m", str(args.memory), "-smp", "1", "-nodefaults", "-no-user-config", "-nographic",
                "-serial", "stdio", "-no-reboot", "-kernel", args.kernel, "-initrd", args.initrd,
                "-append", append]

    order = [args.only] if args.only else ["kiln", "qemu"]
    log(f"host: {host.get('cpu_model')}, kernel {host['kernel']}, {host['nproc']} CPUs, "
        f"kvm_pvm={host['kvm_pvm']}, load {host['loadavg_start']}")
    runs = []
    guest_cmdlines = set()
    for i in range(1, args.runs + 1):
        for vmm in order:
            if vmm == "kiln":
                argv, env = kiln_argv, kiln_env
            else:
                if qemu_append is None:
                    if guest_cmdlines:
                        qemu_append, append_source = sorted(guest_cmdlines)[0], "kiln guest 'Command line:'"
                    else:
                        qemu_append, append_source = fallback_append, "fallback (--cmdline + HostProfile list)"
                    log(f"qemu -append: {qemu_append!r} ({append_source})")
                argv, env = qemu_argv(qemu_append), qemu_env
            log(f"run {i}/{args.runs} {vmm} ...")
            r = run_once(vmm, argv, env, guest_bytes, args.timeout, args.shutdown_timeout, args.sample_interval)
            r["index"] = i
            r["loadavg_after"] = os.getloadavg()
            if vmm == "kiln" and r.get("guest_cmdline"):
                guest_cmdlines.add(r["guest_cmdline"])
            rss = r.get("rss_at_marker") or {}
            log(f"  {vmm}: " + (f"{r['boot_s']:.2f} s, outside-guest RSS {fmt(mib(rss.get('non_guest_rss_bytes')), '.2f')} MiB"
                               if "boot_s" in r else "no marker")
                + (f", first KVM_RUN {r['process_start_to_first_kvm_run_ms']:.2f} ms after process start"
                   if "process_start_to_first_kvm_run_ms" in r else "")
                + f", exit {r.get('exit_code')}" + (f", ERROR: {r['error']}" if r["error"] else ""))
            if not r["ok"]:
                log("  stdout tail: " + r.get("stdout_tail", "")[-600:].replace("\n", "\n    "))
                log("  stderr tail: " + r.get("stderr_tail", "")[-600:].replace("\n", "\n    "))
            runs.append(r)
        if i == 1 and args.runs > 1 and not any(r["ok"] for r in runs):
            log("every VMM failed its first run: stopping (see the tails above)")
            break

    summary = {vmm: summarize(runs, vmm) for vmm in ("kiln", "qemu")}
    k, q = summary["kiln"]["boot_median_s"], summary["qemu"]["boot_median_s"]
    summary["ratio_kiln_over_qemu"] = k / q if k and q else None
    qemu_version = None
    if args.only != "kiln":
        try:
            qemu_version = subprocess.run([args.qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            pass
    host["loadavg_end"] = os.getloadavg()
    qemu_cmdlines = {r.get("guest_cmdline") for r in runs if r["vmm"] == "qemu" and r.get("guest_cmdline")}
    result = {
        "benchmark": "boot",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": host,
        "config": {"runs": args.runs, "memory_mib": args.memory, "timeout_s": args.timeout,
                   "sample_interval_s": args.sample_interval, "order": "interleaved " + ",".join(order)},
        "git": git_state(root),
        "kernel": file_id(args.kernel), "initrd": file_id(args.initrd),
        "kiln": {"argv": kiln_argv, "binary": file_id(args.kiln) if args.only != "qemu" else None,
                 "guest_cmdlines": sorted(guest_cmdlines)},
        "qemu": {"argv": qemu_argv(qemu_append) if qemu_append else None, "append_source": append_source,
                 "version": qemu_version, "guest_cmdlines": sorted(qemu_cmdlines)},
        "same_guest_cmdline": (guest_cmdlines == qemu_cmdlines) if guest_cmdlines and qemu_cmdlines else None,
        "summary": summary,
        "runs": runs,
    }
    out_path = args.json or os.path.join(here, "results", f"boot-{time.strftime('%Y-%m-%d-%H%M')}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")

    print(f"# Kiln boot benchmark, {result['date']}\n")
    print(f"Host: {host.get('cpu_model')}, {host['nproc']} CPUs, kernel {host['kernel']}, "
          f"kvm_pvm={host['kvm_pvm']}; load average {host['loadavg_start'][0]:.2f} at start, "
          f"{host['loadavg_end'][0]:.2f} at end. Guest: {args.memory} MiB, 1 vCPU, "
          f"{args.runs} run(s) per VMM, interleaved.\n")
    if result["same_guest_cmdline"] is False:
        print("**Warning: Kiln's and QEMU's guests report different command lines.**\n")
    print(markdown(runs, summary))
    print(f"\nRaw numbers: {os.path.relpath(out_path)}")
    failed = [r for r in runs if not r["ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
