#!/usr/bin/env python3
"""Kiln device benchmark (guest level): virtio-blk (default) or virtio-net (--device net), Kiln vs QEMU microvm.

virtio-net: see the comment above net_main() below.

Each round boots Kiln, then QEMU (interleaved), with the same kernel, initramfs, guest
command line (apart from the device declarations) and a fresh copy of a 64 MiB raw image
of random bytes as virtio-blk. On the guest's busybox shell it runs, in this order
(N = --mib, default 16; C = --count4k, default 512):

  seqread   busybox dd if=/dev/vda of=/dev/null bs=1M count=N           (buffered, caches dropped)
  read4k    busybox dd if=/dev/vda of=/dev/null bs=4k count=C iflag=direct
            (sequential 4 KiB reads, each one request, queue depth 1)
  rand4k    /bin/randread /dev/vda C 1
            (C reads of 4 KiB at random 4 KiB-aligned offsets, O_DIRECT, queue depth 1, the same
            offsets in every boot: rootfs/randread.c, appended to the initramfs by devices.sh
            through rootfs/build-bench-initramfs.sh; there is no fio in the guest)
  seqwrite  busybox dd if=/dev/zero of=/dev/vda bs=1M count=N conv=fsync

Timing: the guest's busybox dd prints no rate and its date has no %N, so the guest reads
/proc/uptime with the shell's `read` builtin (no fork) just before and after each command
(10 ms resolution; includes the command's fork+exec, ~0.5 s on emulated-CPL0 hosts). The host's
wall time between the two console lines is recorded as a cross-check. randread also times its
reads itself (CLOCK_MONOTONIC, no exec): that is its program_requests_per_s.
Host CPU: utime+stime of every thread of the VMM process (/proc/PID/task/*/stat) when
those two lines arrive; reported as CPU seconds per GiB moved, in total and per thread.

Python 3 standard library only. See docs/benchmarks.md ("Devices").
"""

import argparse
import datetime
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import boot  # noqa: E402  (helpers shared with the boot benchmark)

MARKER = boot.MARKER
CLK_TCK = os.sysconf("SC_CLK_TCK")
IMAGE_MIB = 64
TESTS = []  # (name, guest command, bytes moved); set by set_tests()
RANDREAD_RE = re.compile(r"randread: (\d+) reads of 4096 B in (\d+) ns")


def set_tests(mib, count4k):
    TESTS[:] = [
        ("seqread", f"busybox dd if=/dev/vda of=/dev/null bs=1M count={mib}", mib << 20),
        ("read4k", f"busybox dd if=/dev/vda of=/dev/null bs=4k count={count4k} iflag=direct", count4k * 4096),
        ("rand4k", f"/bin/randread /dev/vda {count4k} 1", count4k * 4096),
        ("seqwrite", f"busybox dd if=/dev/zero of=/dev/vda bs=1M count={mib} conv=fsync", mib << 20),
    ]


def log(msg):
    print(f"[devices.py {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def descendants(pid):
    """pid and every process below it: a root `kiln boot` runs the VMM in a jailed child (`kiln-vmm`)."""
    pids, i = [pid], 0
    while i < len(pids):
        try:
            tids = os.listdir(f"/proc/{pids[i]}/task")
        except OSError:
            tids = []
        for tid in tids:
            try:
                with open(f"/proc/{pids[i]}/task/{tid}/children") as f:
                    pids.extend(int(c) for c in f.read().split())
            except OSError:
                pass
        i += 1
    return pids


def thread_cpu(pid):
    """{tid: (comm, cpu seconds)} for every thread of pid and of its descendants."""
    out = {}
    tids = []
    for p in descendants(pid):
        try:
            tids.extend(f"{p}/task/{t}" for t in os.listdir(f"/proc/{p}/task"))
        except OSError:
            pass
    for path in tids:
        tid = path.rsplit("/", 1)[1]
        try:
            with open(f"/proc/{path}/stat", "rb") as f:
                s = f.read()
        except OSError:
            continue
        lp, rp = s.find(b"("), s.rfind(b")")
        comm = s[lp + 1:rp].decode(errors="replace")
        fields = s[rp + 2:].split()
        out[tid] = (comm, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def cpu_throttling(pid):
    """nr_throttled and throttled seconds of the CPU cgroup of pid's last descendant (the jailed
    Kiln VMM has a CPU quota of one core per vCPU; QEMU has none), or None without a quota."""
    target = descendants(pid)[-1]
    try:
        lines = open(f"/proc/{target}/cgroup").read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        ctl = set(controllers.split(","))
        base = "/sys/fs/cgroup/cpu" if "cpu" in ctl else "/sys/fs/cgroup" if controllers == "" else None
        if base is None or path == "/":
            continue
        try:
            stat = dict(l.split() for l in open(f"{base}{path}/cpu.stat").read().splitlines())
        except (OSError, ValueError):
            continue
        usec = int(stat.get("throttled_usec", int(stat.get("throttled_time", 0)) // 1000))
        return {"cgroup": path, "nr_periods": int(stat.get("nr_periods", 0)),
                "nr_throttled": int(stat.get("nr_throttled", 0)), "throttled_s": round(usec / 1e6, 3)}
    return None


def cpu_delta(before, after):
    """Per-thread CPU seconds between two thread_cpu() samples, busiest first."""
    rows = []
    for tid, (comm, t1) in after.items():
        t0 = before.get(tid, (comm, 0.0))[1]
        rows.append({"tid": int(tid), "comm": comm, "cpu_s": round(t1 - t0, 3)})
    rows.sort(key=lambda r: -r["cpu_s"])
    return rows


class Console:
    """A VMM process with its serial console on stdin/stdout."""

    def __init__(self, argv, env):
        self.t_spawn = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, bufsize=0, env=env, close_fds=True)
        self.pid = self.proc.pid
        self.out = bytearray()
        self.err = bytearray()
        self.bufs = {self.proc.stdout.fileno(): self.out, self.proc.stderr.fileno(): self.err}
        self.open = set(self.bufs)

    def pump(self, wait_s):
        if not self.open:
            time.sleep(max(0.0, wait_s))
            return
        ready, _, _ = select.select(list(self.open), [], [], max(0.0, wait_s))
        for fd in ready:
            chunk = os.read(fd, 65536)
            if chunk:
                self.bufs[fd].extend(chunk)
            else:
                self.open.discard(fd)

    def wait_for(self, pattern, start, timeout):
        """Waits until pattern (bytes regex) matches out[start:]; returns (match, monotonic time) or (None, None)."""
        deadline = time.monotonic() + timeout
        while True:
            m = pattern.search(self.out, start)
            if m:
                return m, time.monotonic()
            now = time.monotonic()
            if now >= deadline or (self.proc.poll() is not None and not self.open):
                return None, None
            self.pump(min(0.5, deadline - now))

    def send(self, line):
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def end(self, timeout):
        """reboot -f, repeated every 10 s; kill after timeout. Returns (exit code, killed)."""
        deadline = time.monotonic() + timeout
        next_send = 0.0
        while self.proc.poll() is None and time.monotonic() < deadline:
            if time.monotonic() >= next_send:
                self.send("reboot -f")
                next_send = time.monotonic() + 10
            self.pump(0.2)
        killed = self.proc.poll() is None
        if killed:
            self.proc.kill()
        self.proc.wait()
        while self.open and select.select(list(self.open), [], [], 0.2)[0]:
            self.pump(0)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        return self.proc.returncode, killed


def run_once(vmm, argv, env, boot_timeout, test_timeout, shutdown_timeout):
    res = {"vmm": vmm, "ok": False, "error": None, "tests": {}}
    c = Console(argv, env)
    res["pid"] = c.pid
    m, t = c.wait_for(re.compile(re.escape(MARKER)), 0, boot_timeout)
    if not m:
        res["error"] = f"no {MARKER.decode()} within {boot_timeout} s"
    else:
        res["boot_s"] = round(t - c.t_spawn, 2)
        pos = m.end()
        pm, _ = c.wait_for(boot.PROMPT_RE, pos, 30)
        if pm:
            pos = pm.end()
        for name, command, nbytes in TESTS:
            # Typed text never matches the patterns below ('KB-T''0', $U0 ...); only the output does.
            c.send(f"echo 3 > /proc/sys/vm/drop_caches; read U0 R < /proc/uptime; echo KB-T''0-{name}; "
                   f"{command}; RC=$?; read U1 R < /proc/uptime; echo KB-E''ND-{name} $U0 $U1 $RC")
            t0m, t0 = c.wait_for(re.compile(rb"KB-T0-" + name.encode() + rb"\b"), pos, 60)
            cpu0 = thread_cpu(c.pid)
            if not t0m:
                res["error"] = f"{name}: no start line"
                break
            em, t1 = c.wait_for(re.compile(rb"KB-END-" + name.encode() + rb" (\d+\.\d+) (\d+\.\d+) (\d+)"),
                                t0m.end(), test_timeout)
            cpu1 = thread_cpu(c.pid)
            if not em:
                res["error"] = f"{name}: not done within {test_timeout} s"
                break
            out = bytes(c.out[t0m.end():em.start()]).decode(errors="replace")
            pos = em.end()
            u0, u1, rc = float(em.group(1)), float(em.group(2)), int(em.group(3))
            threads = cpu_delta(cpu0, cpu1)
            cpu = sum(r["cpu_s"] for r in threads)
            guest_s = u1 - u0
            gib = nbytes / (1 << 30)
            tr = {"bytes": nbytes, "rc": rc, "guest_s": round(guest_s, 2), "host_wall_s": round(t1 - t0, 2),
                  "mib_per_s": round(nbytes / (1 << 20) / guest_s, 3) if guest_s > 0 else None,
                  "host_cpu_s": round(cpu, 2), "host_cpu_s_per_gib": round(cpu / gib, 1),
                  "busiest_thread_cpu_s_per_gib": round(threads[0]["cpu_s"] / gib, 1) if threads else None,
                  "other_threads_cpu_s_per_gib": round((cpu - threads[0]["cpu_s"]) / gib, 2) if threads else None,
                  "threads": threads[:6], "output": out.strip()[-300:]}
            if name in ("read4k", "rand4k"):
                tr["requests_per_s"] = round(nbytes / 4096 / guest_s, 1) if guest_s > 0 else None
            if name == "rand4k":
                rm = RANDREAD_RE.search(out)
                tr["program_requests_per_s"] = round(int(rm.group(1)) * 1e9 / int(rm.group(2)), 1) if rm else None
            res["tests"][name] = tr
            log(f"  {vmm} {name}: {guest_s:.2f} s guest ({tr['mib_per_s']} MiB/s), host wall {t1 - t0:.2f} s, "
                f"VMM CPU {cpu:.2f} s ({tr['host_cpu_s_per_gib']} s/GiB; busiest thread {threads[0]['comm'] if threads else '?'}), rc {rc}")
            if rc != 0:
                res["error"] = f"{name}: exited {rc}: {out.strip()[-200:]}"
                break
    res["cpu_throttling"] = cpu_throttling(c.pid)
    code, killed = c.end(shutdown_timeout)
    res["exit_code"], res["killed"] = code, killed
    cm = boot.CMDLINE_RE.search(bytes(c.out))
    if cm:
        res["guest_cmdline"] = cm.group(1).decode(errors="replace").strip()
    res["sees_vda"] = b"vda" in c.out
    if res["error"] is None and (killed or code != 0):
        res["error"] = f"exit code {code}" + (" (killed)" if killed else "")
    res["ok"] = res["error"] is None and len(res["tests"]) == len(TESTS)
    if not res["ok"]:
        res["stdout_tail"] = bytes(c.out[-1500:]).decode(errors="replace")
        res["stderr_tail"] = bytes(c.err[-1500:]).decode(errors="replace")
    return res


def strip_devices(cmdline):
    """The command line without the virtio-mmio device declarations (each VMM writes its own)."""
    return " ".join(w for w in cmdline.split() if not w.startswith("virtio_mmio.device="))


ROWS = [
    ("seqread", "mib_per_s", "seq read 1 MiB blocks, MiB/s"),
    ("read4k", "requests_per_s", "4 KiB direct reads, reads/s"),
    ("rand4k", "requests_per_s", "random 4 KiB direct reads, reads/s"),
    ("rand4k", "program_requests_per_s", "random 4 KiB direct reads, reads/s by randread's own clock"),
    ("seqwrite", "mib_per_s", "seq write 1 MiB blocks + fsync, MiB/s"),
    ("seqread", "host_cpu_s_per_gib", "seq read: VMM CPU s/GiB"),
    ("read4k", "host_cpu_s_per_gib", "4 KiB reads: VMM CPU s/GiB"),
    ("rand4k", "host_cpu_s_per_gib", "random 4 KiB reads: VMM CPU s/GiB"),
    ("seqwrite", "host_cpu_s_per_gib", "seq write: VMM CPU s/GiB"),
    ("seqread", "other_threads_cpu_s_per_gib", "seq read: CPU s/GiB outside the busiest (vCPU) thread"),
    ("read4k", "other_threads_cpu_s_per_gib", "4 KiB reads: CPU s/GiB outside the busiest (vCPU) thread"),
    ("rand4k", "other_threads_cpu_s_per_gib", "random 4 KiB reads: CPU s/GiB outside the busiest (vCPU) thread"),
    ("seqwrite", "other_threads_cpu_s_per_gib", "seq write: CPU s/GiB outside the busiest (vCPU) thread"),
]


def summarize(runs):
    table = []
    for test, key, label in ROWS:
        row = {"row": label, "test": test, "metric": key}
        for vmm in ("kiln", "qemu"):
            vals = [r["tests"][test][key] for r in runs if r["vmm"] == vmm and test in r["tests"]
                    and r["tests"][test].get(key) is not None]
            row[vmm] = vals
            row[vmm + "_median"] = boot.med(vals)
        k, q = row["kiln_median"], row["qemu_median"]
        row["ratio_kiln_over_qemu"] = round(k / q, 3) if k is not None and q else None
        table.append(row)
    return table


def markdown(table):
    lines = ["| row | Kiln (median) | QEMU microvm (median) | Kiln/QEMU | Kiln runs | QEMU runs |",
             "|---|---:|---:|---:|---|---|"]
    for r in table:
        lines.append(f"| {r['row']} | {boot.fmt(r['kiln_median'], '.3g')} | {boot.fmt(r['qemu_median'], '.3g')} "
                     f"| {boot.fmt(r['ratio_kiln_over_qemu'], '.2f')} | {', '.join(format(v, '.3g') for v in r['kiln'])} "
                     f"| {', '.join(format(v, '.3g') for v in r['qemu'])} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# virtio-net (--device net): Kiln vs QEMU microvm over a TAP inside a private network namespace.
#
# Both VMMs run under `ip netns exec NS` in a namespace of this script's own (kiln-netbench-PID),
# deleted at the end, so no traffic can leave the machine. Kiln gets
# `--net tap=kbk0,host=10.200.88.1/24,guest=10.200.88.2` (it creates the TAP, gives it the address
# and appends ip=... to the guest command line); QEMU gets a TAP kbq0 created beforehand in the
# namespace with the same address and `-netdev tap -device virtio-net-device`, and the same guest
# command line (Kiln's, minus virtio_mmio.device=, so it includes the same ip=...).
# Tests, each timed on the host by a Python listener inside the namespace:
#   h2g  host sends N KiB then shuts its side; guest `busybox nc HOST PORT > /dev/null`;
#        time from accept to the guest closing the connection.
#   g2h  guest `busybox dd if=/dev/zero of=/tmp/blob bs=1k count=N` (own command, not timed), then
#        `busybox nc HOST PORT < /tmp/blob`; time from the first byte to the N-th KiB arriving
#        (busybox nc keeps the socket open after its stdin ends, so the host closes it then).
#   h2g64k, g2h64k  the same with /bin/netio (rootfs/netio.c, in the initramfs devices.sh builds)
#        instead of busybox nc: 64 KiB per read/write system call instead of nc's 1 KiB, so that
#        fewer guest system calls leave more of the time to the network path and its offloads.
# Guest commands avoid $(...) and pipelines and call `busybox nc` (docs/host-kvm.md).

NET_HOST, NET_GUEST, NET_PREFIX = "10.200.88.1", "10.200.88.2", 24
NET_TESTS = ("h2g", "g2h", "h2g64k", "g2h64k")
NET_COMMANDS = {"h2g": "busybox nc {host} {port} > /dev/null", "g2h": "busybox nc {host} {port} < /tmp/blob",
                "h2g64k": "/bin/netio recv {host} {port}", "g2h64k": "/bin/netio send {host} {port} {kib}"}

# Runs inside the namespace; prints LISTENING, then one JSON line per connection.
NET_SERVER = r"""
import json, socket, sys, time
mode, port, nbytes, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", port)); ls.listen(1); ls.settimeout(timeout)
print("LISTENING", flush=True)
r = {"mode": mode, "bytes": 0, "error": None}
try:
    c, peer = ls.accept(); c.settimeout(timeout); t0 = time.monotonic(); r["peer"] = peer[0]
    if mode == "h2g":
        c.sendall(b"\0" * nbytes); r["bytes"] = nbytes; r["sendall_s"] = time.monotonic() - t0
        c.shutdown(socket.SHUT_WR)
        while c.recv(65536):
            pass
        r["seconds"] = time.monotonic() - t0
    else:
        first = None
        while r["bytes"] < nbytes:
            b = c.recv(65536)
            if not b:
                break
            if first is None:
                first = time.monotonic()
            r["bytes"] += len(b)
        r["seconds"] = time.monotonic() - (first or t0); r["accept_to_first_s"] = (first or t0) - t0
    c.close()
except Exception as e:
    r["error"] = repr(e)
print(json.dumps(r), flush=True)
"""


def ns_ip(ns, *args, check=True):
    cmd = ["ip", "netns", "exec", ns, "ip"] + list(args) if ns else ["ip"] + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def run_net_once(vmm, argv, env, ns, kib, port, boot_timeout, test_timeout, shutdown_timeout):
    res = {"vmm": vmm, "ok": False, "error": None, "tests": {}}
    c = Console(argv, env)
    res["pid"] = c.pid
    m, t = c.wait_for(re.compile(re.escape(MARKER)), 0, boot_timeout)
    if not m:
        res["error"] = f"no {MARKER.decode()} within {boot_timeout} s"
    else:
        res["boot_s"] = round(t - c.t_spawn, 2)
        pos = m.end()
        pm, _ = c.wait_for(boot.PROMPT_RE, pos, 30)
        if pm:
            pos = pm.end()
        c.send(f"busybox mkdir -p /tmp; busybox dd if=/dev/zero of=/tmp/blob bs=1k count={kib}; echo KB-B''LOB $?")
        bm, _ = c.wait_for(re.compile(rb"KB-BLOB (\d+)"), pos, 60)
        if not bm or bm.group(1) != b"0":
            res["error"] = "guest could not write /tmp/blob"
        else:
            pos = bm.end()
        nbytes = kib * 1024
        for name in NET_TESTS if res["error"] is None else ():
            port += 1
            srv = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", NET_SERVER, name[:3], str(port),
                                    str(nbytes), str(test_timeout)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
            if srv.stdout.readline().strip() != "LISTENING":
                res["error"] = f"{name}: listener did not start: {srv.stderr.read()[-300:]}"
                srv.kill(); srv.wait()
                break
            cpu0 = thread_cpu(c.pid)
            command = NET_COMMANDS[name].format(host=NET_HOST, port=port, kib=kib)
            c.send(f"{command}; echo KB-E''ND-{name} $?")
            em, t1 = c.wait_for(re.compile(rb"KB-END-" + name.encode() + rb" (\d+)"), pos, test_timeout + 10)
            try:
                out, err = srv.communicate(timeout=test_timeout + 10)
            except subprocess.TimeoutExpired:
                srv.kill()
                out, err = srv.communicate()
            cpu1 = thread_cpu(c.pid)
            try:
                sr = json.loads(out.strip().splitlines()[-1])
            except (ValueError, IndexError):
                sr = {"error": f"listener printed nothing: {err[-300:]}"}
            threads = cpu_delta(cpu0, cpu1)
            cpu = sum(r["cpu_s"] for r in threads)
            secs = sr.get("seconds")
            tr = {"bytes_expected": nbytes, "bytes": sr.get("bytes"), "seconds": round(secs, 3) if secs else None,
                  "kib_per_s": round(sr["bytes"] / 1024 / secs, 2) if secs and sr.get("bytes") else None,
                  "nc_rc": int(em.group(1)) if em else None, "listener": sr,
                  "host_cpu_s": round(cpu, 2), "threads": threads[:6]}
            nm = re.search(rb"netio: \w+ (\d+) B in (\d+) ns", bytes(c.out[pos:em.start() if em else len(c.out)]))
            if nm:  # netio's own clock, from connect to close
                tr["program_kib_per_s"] = round(int(nm.group(1)) / 1024 / (int(nm.group(2)) / 1e9), 2)
            res["tests"][name] = tr
            log(f"  {vmm} {name}: {tr['bytes']} B in {tr['seconds']} s ({tr['kib_per_s']} KiB/s), "
                f"rc {tr['nc_rc']}, VMM CPU {cpu:.2f} s (busiest {threads[0]['comm'] if threads else '?'})")
            if em:
                pos = em.end()
            if sr.get("error") or sr.get("bytes") != nbytes or not em:
                res["error"] = f"{name}: {sr.get('error') or 'short transfer or no end line'}"
                break
    res["cpu_throttling"] = cpu_throttling(c.pid)
    code, killed = c.end(shutdown_timeout)
    res["exit_code"], res["killed"] = code, killed
    cm = boot.CMDLINE_RE.search(bytes(c.out))
    if cm:
        res["guest_cmdline"] = cm.group(1).decode(errors="replace").strip()
    if res["error"] is None and (killed or code != 0):
        res["error"] = f"exit code {code}" + (" (killed)" if killed else "")
    res["ok"] = res["error"] is None and len(res["tests"]) == len(NET_TESTS)
    if not res["ok"]:
        res["stdout_tail"] = bytes(c.out[-1500:]).decode(errors="replace")
        res["stderr_tail"] = bytes(c.err[-1500:]).decode(errors="replace")
    return res


def net_main(args, here, root):
    host = boot.host_info()
    host["loadavg_start"] = open("/proc/loadavg").read().strip()
    ns = f"kiln-netbench-{os.getpid()}"
    ktap, qtap = "kbk0", "kbq0"
    kiln_argv = [args.kiln, "boot", "--kernel", args.kernel, "--initrd", args.initrd, "--cmdline", args.cmdline,
                 "--memory", str(args.memory), "--cpus", "1",
                 "--net", f"tap={ktap},host={NET_HOST}/{NET_PREFIX},guest={NET_GUEST}"
                 + (f",{args.kiln_net_options}" if args.kiln_net_options else "")]
    fallback_append = (args.cmdline + (" " + boot.EMULATED_CPL0_PARAMS if host["kvm_pvm"] else "")
                       + f" ip={NET_GUEST}::{NET_HOST}:255.255.255.0::eth0:off")
    qemu_append, append_source = None, None

    def qemu_argv(append):
        return [args.qemu, "-M", boot.QEMU_MACHINE, "-enable-kvm", "-cpu", boot.QEMU_CPU,
                "-m", str(args.memory), "-smp", "1", "-nodefaults", "-no-user-config", "-nographic",
                "-serial", "stdio", "-no-reboot", "-device", "i8042", "-kernel", args.kernel, "-initrd", args.initrd,
                "-append", append, "-netdev", f"tap,id=n0,ifname={qtap},script=no,downscript=no",
                "-device", "virtio-net-device,netdev=n0"]

    order = [args.only] if args.only else ["kiln", "qemu"]
    if args.other_kiln:  # a second Kiln binary (another build, e.g. before a change) in the same rotation
        order.append("kiln-other")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    log(f"host load {host['loadavg_start']}; namespace {ns}")
    runs, kiln_cmdlines = [], set()
    try:
        ns_ip(ns, "link", "set", "lo", "up")
        for i in range(1, args.runs + 1):
            for vmm in order:
                if vmm == "kiln":
                    argv = ["ip", "netns", "exec", ns] + kiln_argv
                elif vmm == "kiln-other":
                    argv = ["ip", "netns", "exec", ns, args.other_kiln] + kiln_argv[1:]
                else:
                    if qemu_append is None:
                        if kiln_cmdlines:
                            qemu_append = strip_devices(sorted(kiln_cmdlines)[0])
                            append_source = "kiln guest 'Command line:' minus virtio_mmio.device="
                        else:
                            qemu_append, append_source = fallback_append, "fallback (--cmdline + HostProfile list + ip=)"
                        log(f"qemu -append: {qemu_append!r} ({append_source})")
                    ns_ip(ns, "tuntap", "add", qtap, "mode", "tap")
                    ns_ip(ns, "addr", "add", f"{NET_HOST}/{NET_PREFIX}", "dev", qtap)
                    ns_ip(ns, "link", "set", qtap, "up")
                    argv = ["ip", "netns", "exec", ns] + qemu_argv(qemu_append)
                log(f"round {i}/{args.runs} {vmm} ...")
                r = run_net_once(vmm, argv, dict(os.environ), ns, args.kib, 7100 + 10 * len(runs),
                                 args.boot_timeout, args.test_timeout, args.shutdown_timeout)
                if vmm == "qemu":
                    ns_ip(ns, "tuntap", "del", qtap, "mode", "tap", check=False)
                r["round"] = i
                r["loadavg_after"] = open("/proc/loadavg").read().strip()
                if vmm == "kiln" and r.get("guest_cmdline"):
                    kiln_cmdlines.add(r["guest_cmdline"])
                log(f"  {vmm}: boot {r.get('boot_s')} s, exit {r['exit_code']}"
                    + (f", ERROR: {r['error']}" if r["error"] else ""))
                if not r["ok"]:
                    log("  stdout tail: " + r.get("stdout_tail", "")[-800:].replace("\n", "\n    "))
                    log("  stderr tail: " + r.get("stderr_tail", "")[-400:].replace("\n", "\n    "))
                runs.append(r)
            if i == 1 and not any(r["ok"] for r in runs):
                log("every VMM failed its first round: stopping")
                break
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)

    table = []
    for test, label in (("h2g", f"host -> guest {args.kib} KiB, KiB/s"), ("g2h", f"guest -> host {args.kib} KiB, KiB/s"),
                        ("h2g", "host -> guest: VMM CPU s"), ("g2h", "guest -> host: VMM CPU s"),
                        ("h2g64k", f"host -> guest {args.kib} KiB, 64 KiB reads (netio), KiB/s"),
                        ("g2h64k", f"guest -> host {args.kib} KiB, 64 KiB writes (netio), KiB/s"),
                        ("h2g64k", "host -> guest, netio: VMM CPU s"), ("g2h64k", "guest -> host, netio: VMM CPU s")):
        key = "kib_per_s" if "KiB/s" in label else "host_cpu_s"
        row = {"row": label, "test": test, "metric": key}
        for vmm in ("kiln", "qemu") + (("kiln-other",) if args.other_kiln else ()):
            vals = [r["tests"][test][key] for r in runs if r["vmm"] == vmm and test in r["tests"]
                    and r["tests"][test].get(key) is not None and r["tests"][test].get("bytes") == args.kib * 1024]
            row[vmm] = vals
            row[vmm + "_median"] = boot.med(vals)
        k, q = row["kiln_median"], row["qemu_median"]
        row["ratio_kiln_over_qemu"] = round(k / q, 3) if k is not None and q else None
        if args.other_kiln:
            o = row["kiln-other_median"]
            row["ratio_kiln_other_over_qemu"] = round(o / q, 3) if o is not None and q else None
        table.append(row)
    if args.other_kiln:
        print(f"\nSecond Kiln binary {args.other_kiln} (vmm kiln-other), medians: " + "; ".join(
            f"{r['row']}: {boot.fmt(r['kiln-other_median'], '.3g')} ({', '.join(format(v, '.3g') for v in r['kiln-other'])}),"
            f" /QEMU {boot.fmt(r['ratio_kiln_other_over_qemu'], '.2f')}" for r in table), file=sys.stderr)
    return write_report("devices-net", "virtio-net", args, host, runs, table, order, kiln_argv,
                        qemu_argv(qemu_append) if qemu_append else None, append_source, here, root,
                        {"kib": args.kib, "namespace": ns,
                         "timing": "host-side Python listener in the namespace: h2g accept -> guest close; "
                                   "g2h first byte -> last expected byte"})


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser(description="Kiln vs QEMU microvm guest-level virtio-blk benchmark")
    ap.add_argument("--runs", type=int, default=3, help="rounds (one boot of each VMM per round; default 3)")
    ap.add_argument("--kiln", default=os.path.join(root, ".build/release/kiln"))
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--kernel", default="/var/cache/kiln/kernel/vmlinux")
    ap.add_argument("--initrd", default="/var/cache/kiln/initramfs/initramfs.cpio")
    ap.add_argument("--memory", type=int, default=256)
    ap.add_argument("--cmdline", default=boot.DEFAULT_CMDLINE)
    ap.add_argument("--boot-timeout", type=float, default=180)
    ap.add_argument("--test-timeout", type=float, default=240, help="per dd, s (default 240)")
    ap.add_argument("--shutdown-timeout", type=float, default=60)
    ap.add_argument("--mib", type=int, default=16,
                    help="MiB per sequential dd (default 16; at most 64, the image size). ~1 MiB/s on emulated-CPL0 hosts")
    ap.add_argument("--count4k", type=int, default=512, help="4 KiB direct reads (default 512)")
    ap.add_argument("--only", choices=["kiln", "qemu"])
    ap.add_argument("--device", choices=["blk", "net"], default="blk",
                    help="blk (default) or net: virtio-net over a TAP in a private network namespace (root)")
    ap.add_argument("--kib", type=int, default=256, help="--device net: KiB per transfer (default 256)")
    ap.add_argument("--other-kiln", default=None,
                    help="--device net: a second kiln binary to boot in the same rotation (reported as kiln-other)")
    ap.add_argument("--kiln-disk-options", default=None,
                    help="appended to Kiln's --disk IMG, e.g. rate=256K (Benchmarks/ratelimit.sh)")
    ap.add_argument("--kiln-net-options", default=None,
                    help="--device net: appended to Kiln's --net spec, e.g. rate=8K (Benchmarks/ratelimit.sh)")
    ap.add_argument("--json", default=None, help="default Benchmarks/results/devices-<date>.json")
    args = ap.parse_args()
    if args.device == "net":
        return net_main(args, here, root)

    set_tests(min(args.mib, IMAGE_MIB), min(args.count4k, IMAGE_MIB * 256))
    host = boot.host_info()
    host["loadavg_start"] = open("/proc/loadavg").read().strip()
    workdir = tempfile.mkdtemp(prefix="kiln-devbench-")
    master, image = os.path.join(workdir, "random.img"), os.path.join(workdir, "disk.img")
    with open(master, "wb") as f:
        for _ in range(IMAGE_MIB):
            f.write(os.urandom(1 << 20))
    kiln_argv = [args.kiln, "boot", "--kernel", args.kernel, "--initrd", args.initrd, "--cmdline", args.cmdline,
                 "--memory", str(args.memory), "--cpus", "1",
                 "--disk", image + (f",{args.kiln_disk_options}" if args.kiln_disk_options else "")]
    fallback_append = args.cmdline + (" " + boot.EMULATED_CPL0_PARAMS if host["kvm_pvm"] else "")
    qemu_append, append_source = None, None

    def qemu_argv(append):
        return [args.qemu, "-M", boot.QEMU_MACHINE, "-enable-kvm", "-cpu", boot.QEMU_CPU,
                "-m", str(args.memory), "-smp", "1", "-nodefaults", "-no-user-config", "-nographic",
                "-serial", "stdio", "-no-reboot", "-device", "i8042", "-kernel", args.kernel, "-initrd", args.initrd,
                "-append", append, "-drive", f"file={image},format=raw,if=none,id=d0",
                "-device", "virtio-blk-device,drive=d0"]

    order = [args.only] if args.only else ["kiln", "qemu"]
    log(f"host load {host['loadavg_start']}; image {image}")
    runs, kiln_cmdlines = [], set()
    try:
        for i in range(1, args.runs + 1):
            for vmm in order:
                shutil.copyfile(master, image)  # same random bytes for every boot (the write test zeroes it)
                if vmm == "kiln":
                    argv, env = kiln_argv, dict(os.environ)
                else:
                    if qemu_append is None:
                        if kiln_cmdlines:
                            qemu_append = strip_devices(sorted(kiln_cmdlines)[0])
                            append_source = "kiln guest 'Command line:' minus virtio_mmio.device="
                        else:
                            qemu_append, append_source = fallback_append, "fallback (--cmdline + HostProfile list)"
                        log(f"qemu -append: {qemu_append!r} ({append_source})")
                    argv, env = qemu_argv(qemu_append), dict(os.environ)
                log(f"round {i}/{args.runs} {vmm} ...")
                r = run_once(vmm, argv, env, args.boot_timeout, args.test_timeout, args.shutdown_timeout)
                r["round"] = i
                r["loadavg_after"] = open("/proc/loadavg").read().strip()
                if vmm == "kiln" and r.get("guest_cmdline"):
                    kiln_cmdlines.add(r["guest_cmdline"])
                log(f"  {vmm}: boot {r.get('boot_s')} s, sees vda {r['sees_vda']}, exit {r['exit_code']}"
                    + (f", ERROR: {r['error']}" if r["error"] else ""))
                if not r["ok"]:
                    log("  stdout tail: " + r.get("stdout_tail", "")[-800:].replace("\n", "\n    "))
                    log("  stderr tail: " + r.get("stderr_tail", "")[-400:].replace("\n", "\n    "))
                runs.append(r)
            if i == 1 and not any(r["ok"] for r in runs):
                log("every VMM failed its first round: stopping")
                break
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    table = summarize(runs)
    return write_report("devices", "virtio-blk", args, host, runs, table, order, kiln_argv,
                        qemu_argv(qemu_append) if qemu_append else None, append_source, here, root,
                        {"image_mib": IMAGE_MIB,
                         "timing": "guest /proc/uptime (read builtin) before/after each command, includes its fork+exec; "
                                   "rand4k also by randread's own CLOCK_MONOTONIC",
                         "tests": [{"name": n, "command": c, "bytes": b} for n, c, b in TESTS]})


def write_report(name, title, args, host, runs, table, order, kiln_argv, qemu_command, append_source, here, root,
                 config):
    """Records the run as JSON under results/ and prints the markdown report; returns the exit status."""
    host["loadavg_end"] = open("/proc/loadavg").read().strip()
    k_lines = {strip_devices(r["guest_cmdline"]) for r in runs if r["vmm"] == "kiln" and r.get("guest_cmdline")}
    q_lines = {strip_devices(r["guest_cmdline"]) for r in runs if r["vmm"] == "qemu" and r.get("guest_cmdline")}
    try:
        qemu_version = subprocess.run([args.qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        qemu_version = None
    result = {
        "benchmark": name,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": host, "git": boot.git_state(root),
        "config": {"rounds": args.runs, "memory_mib": args.memory, **config, "order": "interleaved " + ",".join(order)},
        "kernel": boot.file_id(args.kernel), "initrd": boot.file_id(args.initrd),
        "kiln": {"argv": kiln_argv, "binary": boot.file_id(args.kiln) if args.only != "qemu" else None},
        "kiln_other": {"binary": boot.file_id(args.other_kiln)} if getattr(args, "other_kiln", None) else None,
        "qemu": {"argv": qemu_command, "append_source": append_source,
                 "version": qemu_version},
        "same_guest_cmdline_apart_from_devices": (k_lines == q_lines) if k_lines and q_lines else None,
        "guest_cmdlines": {"kiln": sorted(k_lines), "qemu": sorted(q_lines)},
        "summary": table, "runs": runs,
    }
    out_path = args.json or os.path.join(here, "results", f"{name}-{time.strftime('%Y-%m-%d-%H%M')}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"# Kiln device benchmark ({title}), {result['date']}\n")
    print(f"Load average at start: {host['loadavg_start']}; at end: {host['loadavg_end']}. "
          f"{args.runs} round(s), interleaved {','.join(order)}; guest {args.memory} MiB, 1 vCPU; "
          f"same guest command line apart from devices: {result['same_guest_cmdline_apart_from_devices']}.\n")
    print(markdown(table))
    print(f"\nRaw numbers: {os.path.relpath(out_path)}")
    return 0 if runs and all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
