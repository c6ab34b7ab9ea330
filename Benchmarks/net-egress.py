#!/usr/bin/env python3
"""Network egress benchmark (issue 15; docs/benchmarks.md, "Network egress"): Kiln's NAT and
egress proxy against the raw TAP of `kiln boot --net`, the proxy's CPU per GiB, and one sandbox's
flood against another's throughput. Driven by Benchmarks/net-egress.sh (root).

Everything talks only to a "fake internet" this script makes: a network namespace
(kiln-netbench-inet-TAG) behind a veth pair, SERVER 198.19.200.2 (the host's end 198.19.200.1),
in the 198.18.0.0/15 benchmarking range. In it one Python process serves
  TCP 80 and 8080   `GET /c` (a 3-byte answer), `GET /down/N` (N bytes), `PUT /up` (read to EOF);
                    one JSON line per connection on its stdout, with its own timing;
  UDP 53            DNS: NAME (default bench.kiln.test) is SERVER, anything else NXDOMAIN
                    (the sandboxes' egress helper asks it: KILN_NET_RESOLVER=SERVER);
  UDP 9             a sink for the flood: totals printed once a second.
The guests' client is rootfs/netio.c (static, 64 KiB per system call; modes get, put, conns,
flood), the same binary in every guest: in the raw TAP's initramfs (rootfs/build-bench-initramfs.sh)
and sent to each `kiln run` sandbox on its stdin (`kiln run -i ... sh -c 'cat > /tmp/netio; ...'`).

Parts (all in one run):
  paths   per path: netio conns (N connect + request + answer), R x get BYTES, R x put KIB;
          raw   `kiln boot --net tap=TAP,host=198.19.201.1/24,guest=198.19.201.2` (initramfs,
                serial console), the host routing and masquerading 198.19.201.0/24 to the veth
                (table ip kiln-netbench-TAG);
          nat   `kiln run --net` (CIDR rules, nftables NAT in the sandbox's namespace and the host's);
          proxy `kiln run --net --allow-out NAME` (port 80 redirected to kiln-egress, which reads
                the Host header and, the address being allowed by --net, dials it as it was);
          proxy-name `kiln run --allow-out NAME` (no --net: the helper resolves NAME upstream
                for every connection and dials its address).
  proxycpu  kiln-egress's own CPU (utime+stime of /proc/PID/stat, all its threads, exited ones
          included) while a host process moves --proxy-mib MiB through it, each way. The sandbox is
          `kiln run --allow-out NAME -- sleep` (its guest idle); the client runs in that sandbox's
          network namespace (nsenter -t HELPER -n) and reaches the helper exactly as a guest's
          connection does after the sandbox's `tcp dport 80 redirect to :15001`: a table of this
          script's own in that namespace DNATs the client's (uid 0; the helper is nobody) TCP to
          SERVER:80 to 100.127.255.1:15001, so the helper's SO_ORIGINAL_DST is SERVER:80 and the
          rest is the helper's normal path (Host header, resolve, dial, splice). Baseline: a plain
          copying relay (Python, 64 KiB recv_into/sendall, a thread each way, as the helper does)
          at 100.127.255.1:15002 in the same namespace, dialling SERVER:8080 over the same route;
          and the client straight to SERVER:8080 (no relay) for the route's own rate.
  flood   sandbox B (`kiln run --net`) puts R x KIB to SERVER: solo; beside sandbox A idle
          (`kiln run --net -- sleep`); beside sandbox A flooding (netio flood: 1400-byte UDP
          datagrams to SERVER:9 as fast as its guest can send them). Host CPU (/proc/stat) and each
          VMM's CPU over B's run are recorded.

Python 3 standard library only; helpers from devices.py and boot.py.
"""

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import boot  # noqa: E402
import devices  # noqa: E402  (Console, thread_cpu, descendants, cpu_delta)

SERVER, HOST_SIDE = "198.19.200.2", "198.19.200.1"
TAP_HOST, TAP_GUEST = "198.19.201.1", "198.19.201.2"
GATEWAY = "100.127.255.1"  # the sandbox side of every Kiln sandbox network (docs/net.md)
CLK_TCK = os.sysconf("SC_CLK_TCK")
FAKE_DNS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "net")

FAKE_INTERNET = r"""
import json, socket, sys, threading, time
SERVER, NAME = sys.argv[1], sys.argv[2].lower()
sys.path.insert(0, sys.argv[3])
import fakedns  # Tests/net/fakedns.py
lock = threading.Lock()
ZEROS = memoryview(bytes(1 << 20))
def note(d):
    with lock:
        sys.stdout.write(json.dumps(d) + "\n"); sys.stdout.flush()
def dns(sock):
    fakedns.serve(sock, lambda name: SERVER if name == NAME else None)
def sink(sock):
    count = nbytes = 0; last = time.monotonic()
    buf = bytearray(65536)
    sock.settimeout(1.0)
    while True:
        try:
            n = sock.recv_into(buf); count += 1; nbytes += n
        except socket.timeout:
            pass
        now = time.monotonic()
        if now - last >= 1.0:
            note({"kind": "udp", "t": now, "datagrams": count, "bytes": nbytes}); last = now
def handle(c, port):
    r = {"kind": "?", "port": port, "t0": time.monotonic()}
    try:
        c.settimeout(120)
        head = b""
        while b"\r\n\r\n" not in head:
            b = c.recv(65536)
            if not b:
                break
            head += b
        line, _, rest = head.partition(b"\r\n\r\n")
        words = line.split(b"\r\n")[0].split()
        if len(words) >= 2 and words[0] == b"GET" and words[1].startswith(b"/down/"):
            n = int(words[1][6:]); r.update(kind="get", bytes=n)
            c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
            t = time.monotonic(); left = n
            while left:
                k = min(left, len(ZEROS)); c.sendall(ZEROS[:k]); left -= k
            r["sendall_s"] = time.monotonic() - t
            c.shutdown(socket.SHUT_WR)
            while c.recv(65536):
                pass
            r["seconds"] = time.monotonic() - t
        elif len(words) >= 2 and words[0] == b"PUT":
            r.update(kind="put"); got = len(rest); first = time.monotonic() if got else None
            buf = bytearray(1 << 20)
            while True:
                k = c.recv_into(buf)
                if not k:
                    break
                if first is None:
                    first = time.monotonic()
                got += k
            last = time.monotonic()
            r.update(bytes=got, seconds=last - (first or last))
            c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
        else:
            r.update(kind="c"); c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
    except Exception as e:
        r["error"] = repr(e)
    finally:
        c.close()
    if r["kind"] != "c" or r.get("error"):
        note(r)
def serve(listener, port):
    while True:
        c, _ = listener.accept()
        threading.Thread(target=handle, args=(c, port), daemon=True).start()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind((SERVER, 53))
flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); flood.bind((SERVER, 9))
flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
threads = [threading.Thread(target=dns, args=(udp,), daemon=True), threading.Thread(target=sink, args=(flood,), daemon=True)]
for port in (80, 8080):
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind((SERVER, port)); l.listen(64)
    threads.append(threading.Thread(target=serve, args=(l, port), daemon=True))
for t in threads:
    t.start()
print("ready", flush=True)
threading.Event().wait()
"""

# A plain copying relay (the proxy's baseline): LISTEN -> SERVER:8080, 64 KiB recv_into/sendall,
# a thread each way, half-closes passed on.
RELAY = r"""
import socket, sys, threading
listen, target = sys.argv[1], sys.argv[2]
def copy(a, b):
    buf = bytearray(65536); view = memoryview(buf)
    try:
        while True:
            n = a.recv_into(buf)
            if not n:
                break
            b.sendall(view[:n])
    except OSError:
        pass
    try:
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass
def conn(c):
    u = socket.create_connection((target.split(":")[0], int(target.split(":")[1])))
    t = threading.Thread(target=copy, args=(u, c)); t.start(); copy(c, u); t.join(); u.close(); c.close()
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((listen.split(":")[0], int(listen.split(":")[1]))); l.listen(8)
print("ready", flush=True)
while True:
    c, _ = l.accept(); threading.Thread(target=conn, args=(c,), daemon=True).start()
"""

# The host-side client of the proxy CPU part: one GET /down/N or PUT of N bytes; prints JSON.
CLIENT = r"""
import json, socket, sys, time
addr, port, name, mode, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
buf = bytearray(1 << 20); zeros = memoryview(bytes(1 << 20))
t0 = time.monotonic(); s = socket.create_connection((addr, port)); moved = 0
if mode == "get":
    s.sendall(b"GET /down/%d HTTP/1.0\r\nHost: %s\r\n\r\n" % (n, name.encode()))
    head = b""
    while True:
        k = s.recv_into(buf)
        if not k:
            break
        if len(head) < 512 and b"\r\n\r\n" not in head:
            head += bytes(buf[:min(k, 512)])
        moved += k
    moved -= head.find(b"\r\n\r\n") + 4  # the body only
else:
    s.sendall(b"PUT /up HTTP/1.0\r\nHost: %s\r\nContent-Length: %d\r\n\r\n" % (name.encode(), n))
    left = n
    while left:
        k = min(left, len(zeros)); s.sendall(zeros[:k]); left -= k; moved += k
    s.shutdown(socket.SHUT_WR)
    while s.recv_into(buf):
        pass
t1 = time.monotonic(); s.close()
print(json.dumps({"mode": mode, "bytes": moved, "seconds": t1 - t0}))
"""

NETIO_RE = re.compile(r"netio: (get|put) (\d+) B in (\d+) ns")
CONNS_RE = re.compile(r"netio: conns (\d+) connect_ns (\d+) (\d+) (\d+) first_byte_ns (\d+) (\d+) (\d+) total_ns (\d+)")


def log(msg):
    print(f"[net-egress {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(*argv, check=True, input=None):
    r = subprocess.run(list(argv), capture_output=True, text=True, input=input)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")
    return r


def proc_cpu(pid):
    """utime+stime of a whole process (its live and exited threads), seconds; None when gone."""
    try:
        s = open(f"/proc/{pid}/stat", "rb").read()
    except OSError:
        return None
    f = s[s.rfind(b")") + 2:].split()
    return (int(f[11]) + int(f[12])) / CLK_TCK


def tree_cpu(pid):
    """CPU seconds of pid and all its descendants' live threads (a VMM under `kiln run`)."""
    return sum(c for _, c in devices.thread_cpu(pid).values())


def host_stat():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
    return dict(zip(names, v))


def host_delta(a, b):
    d = {k: (b[k] - a[k]) / CLK_TCK for k in a}
    total = sum(d.values()) or 1
    return {"cpu_s": {k: round(x, 2) for k, x in d.items()},
            "busy_share": round(1 - (d["idle"] + d["iowait"]) / total, 3)}


class Bench:
    def __init__(self, args):
        self.args = args
        tag = args.tag
        self.ns = f"kiln-netbench-inet-{tag}"
        self.veth, self.peer = f"kbe{tag}", f"kbf{tag}"
        self.tap = f"kbt{tag}"
        self.table = f"kiln-netbench-{tag}"
        self.procs = []  # every process started, killed at the end
        self.server = None
        self.events = []
        self.events_lock = threading.Lock()
        self.env = dict(os.environ, KILN_NET_RESOLVER=SERVER)

    # -- the fake internet ----------------------------------------------------------------------
    def setup(self):
        for route in sh("ip", "-4", "route").stdout.splitlines():
            if route.startswith(("198.19.200.", "198.19.201.")):
                raise RuntimeError(f"the host already has a route in this benchmark's ranges: {route}")
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", self.peer, "netns", self.ns)
        sh("ip", "addr", "add", f"{HOST_SIDE}/30", "dev", self.veth)
        sh("ip", "link", "set", self.veth, "up")
        sh("ip", "-n", self.ns, "addr", "add", f"{SERVER}/30", "dev", self.peer)
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.ns, "link", "set", self.peer, "up")
        sh("ip", "-n", self.ns, "route", "add", "default", "via", HOST_SIDE)
        # The raw TAP: persistent, made here so that forwarding can be set before the VM opens it.
        sh("ip", "tuntap", "add", self.tap, "mode", "tap")
        for dev in (self.veth, self.tap):
            with open(f"/proc/sys/net/ipv4/conf/{dev}/forwarding", "w") as f:
                f.write("1")
        sh("nft", "-f", "-", input=f"""table ip {self.table} {{
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;
    ip saddr {TAP_GUEST} oifname "{self.veth}" masquerade
  }}
}}
""")
        self.server = subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, "-c", FAKE_INTERNET, SERVER,
                                        self.args.name, FAKE_DNS_DIR], stdout=subprocess.PIPE, text=True)
        self.procs.append(self.server)
        if self.server.stdout.readline().strip() != "ready":
            raise RuntimeError("the fake internet's server did not start")
        threading.Thread(target=self._read_events, daemon=True).start()

    def _read_events(self):
        for line in self.server.stdout:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            with self.events_lock:
                self.events.append(e)

    def mark(self):
        with self.events_lock:
            return len(self.events)

    def events_since(self, mark, kind=None):
        with self.events_lock:
            return [e for e in self.events[mark:] if kind is None or e.get("kind") == kind]

    def last_udp(self):
        with self.events_lock:
            for e in reversed(self.events):
                if e.get("kind") == "udp":
                    return e
        return {"datagrams": 0, "bytes": 0, "t": time.monotonic()}

    def cleanup(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        sh("nft", "delete", "table", "ip", self.table, check=False)
        sh("ip", "link", "del", self.tap, check=False)
        sh("ip", "link", "del", self.veth, check=False)
        sh("ip", "netns", "del", self.ns, check=False)

    # -- guests -----------------------------------------------------------------------------------
    def guest_script(self, netio):
        a = self.args
        # The first connection of a fresh guest is timed on its own (it waited seconds in trials).
        cmds = [f"{netio} conns {SERVER} 80 {a.name} 1", f"{netio} conns {SERVER} 80 {a.name} {a.connects}"]
        cmds += [f"{netio} get {SERVER} 80 {a.name} {a.kib * 1024}"] * a.repeats
        cmds += [f"{netio} put {SERVER} 80 {a.name} {a.kib}"] * a.repeats
        return "; ".join(cmds)

    def kiln_run(self, options, script, wait_line=None):
        """Starts `kiln run -i OPTIONS -- sh -c 'receive netio; SCRIPT'` with netio on its stdin."""
        argv = [self.args.kiln, "run", "-i", *options, "--", "sh", "-c",
                "cat > /tmp/netio && chmod 755 /tmp/netio && " + script]
        stdin = open(self.args.netio, "rb")
        p = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env)
        stdin.close()
        self.procs.append(p)
        if wait_line:
            deadline = time.monotonic() + self.args.start_timeout
            while time.monotonic() < deadline:
                line = p.stdout.readline()
                if not line:
                    break
                if line.strip() == wait_line:
                    return p
            raise RuntimeError(f"{' '.join(argv[:6])}: no '{wait_line}' (exit {p.poll()}): {p.stderr.read()[-500:]}")
        return p

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    @staticmethod
    def parse_guest(out):
        r = {"get_kib_per_s": [], "put_kib_per_s": []}
        for m in NETIO_RE.finditer(out):
            r[m.group(1) + "_kib_per_s"].append(round(int(m.group(2)) / 1024 / (int(m.group(3)) / 1e9), 1))
        found = list(CONNS_RE.finditer(out))
        if found:
            r["first_connection_ms"] = int(found[0].group(5)) / 1e6
        for m in found[1:2]:
            v = [int(x) for x in m.groups()]
            r["conns"] = {"n": v[0], "connect_ms_median": v[1] / 1e6, "connect_ms_min": v[2] / 1e6,
                          "connect_ms_max": v[3] / 1e6, "first_byte_ms_median": v[4] / 1e6,
                          "first_byte_ms_min": v[5] / 1e6, "first_byte_ms_max": v[6] / 1e6,
                          "total_ms_per_conn": round(v[7] / 1e6 / v[0], 2)}
        return r

    def path_raw(self):
        a = self.args
        argv = [a.kiln, "boot", "--kernel", a.kernel, "--initrd", a.initrd, "--cmdline", boot.DEFAULT_CMDLINE,
                "--memory", "256", "--cpus", "1", "--net", f"tap={self.tap},host={TAP_HOST}/24,guest={TAP_GUEST}"]
        # Kiln leaves a persistent TAP as it was, the address its host= added included, and a
        # second boot's `ip addr add` of the same address fails: start each boot from no address.
        sh("ip", "addr", "flush", "dev", self.tap)
        c = devices.Console(argv, dict(os.environ))
        self.procs.append(c.proc)
        res = {"argv": argv}
        try:
            m, t = c.wait_for(re.compile(re.escape(boot.MARKER)), 0, a.start_timeout)
            if not m:
                raise RuntimeError(f"raw TAP guest did not boot: {bytes(c.out[-800:]).decode(errors='replace')} "
                                   f"{bytes(c.err[-800:]).decode(errors='replace')}")
            res["boot_s"] = round(t - c.t_spawn, 1)
            pm, _ = c.wait_for(boot.PROMPT_RE, m.end(), 30)
            pos = pm.end() if pm else m.end()
            mark = self.mark()
            cpu0 = tree_cpu(c.pid)
            c.send(self.guest_script("/bin/netio") + "; echo KB-E''ND $?")
            em, _ = c.wait_for(re.compile(rb"KB-END (\d+)"), pos, a.test_timeout)
            if not em:
                raise RuntimeError(f"raw TAP guest did not finish: {bytes(c.out[-800:]).decode(errors='replace')}")
            res["vmm_cpu_s"] = round(tree_cpu(c.pid) - cpu0, 2)
            res.update(self.parse_guest(bytes(c.out[pos:em.start()]).decode(errors="replace")))
            res["server"] = self.events_since(mark)
        finally:
            c.end(60)
        return res

    def path_kiln(self, options):
        mark = self.mark()
        t0 = time.monotonic()
        p = self.kiln_run(options, self.guest_script("/tmp/netio"))
        try:
            out, err = p.communicate(timeout=self.args.test_timeout)
        except subprocess.TimeoutExpired:
            self.stop(p)
            raise RuntimeError(f"kiln run {options} did not finish")
        res = {"argv_options": options, "wall_s": round(time.monotonic() - t0, 1), "exit": p.returncode}
        res.update(self.parse_guest(out))
        res["server"] = self.events_since(mark)
        if p.returncode != 0:
            res["stderr"] = err[-800:]
        return res

    def paths(self):
        a = self.args
        opts = {"nat": ["--net"], "proxy": ["--net", "--allow-out", a.name], "proxy-name": ["--allow-out", a.name]}
        rounds = []
        for i in range(a.rounds):
            rnd = {}
            for path in a.paths.split(","):
                log(f"paths round {i + 1}/{a.rounds}: {path} (load {open('/proc/loadavg').read().split()[0]})")
                try:
                    rnd[path] = self.path_raw() if path == "raw" else self.path_kiln(opts[path])
                except RuntimeError as e:
                    rnd[path] = {"error": str(e)}
                r = rnd[path]
                log(f"  {path}: conns {r.get('conns', {}).get('first_byte_ms_median')} ms median to first byte, "
                    f"get {r.get('get_kib_per_s')} KiB/s, put {r.get('put_kib_per_s')} KiB/s"
                    + (f", ERROR {r['error']}" if r.get("error") else ""))
            rnd["loadavg"] = open("/proc/loadavg").read().strip()
            rounds.append(rnd)
        return rounds

    # -- proxy CPU per GiB ------------------------------------------------------------------------
    def proxy_sandbox(self):
        """A `kiln run --allow-out NAME -- sleep` sandbox, its helper's pid, and (in that sandbox's
        namespace) this script's DNAT to the helper and the baseline relay."""
        a = self.args
        sbx = self.kiln_run(["--allow-out", a.name], "echo kb-up; exec sleep 900", wait_line="kb-up")
        helper = next((p for p in devices.descendants(sbx.pid)
                       if open(f"/proc/{p}/comm").read().strip() == "kiln-egress"), None)
        if helper is None:
            self.stop(sbx)
            raise RuntimeError("no kiln-egress under kiln run")
        enter = ["nsenter", "-t", str(helper), "-n"]
        sh(*enter, "nft", "-f", "-", input=f"""table ip {self.table} {{
  chain output {{ type nat hook output priority -100; policy accept;
    meta skuid 0 ip daddr {SERVER} tcp dport 80 dnat to {GATEWAY}:15001
  }}
}}
""")
        relay = subprocess.Popen([*enter, sys.executable, "-c", RELAY, f"{GATEWAY}:15002", f"{SERVER}:8080"],
                                 stdout=subprocess.PIPE, text=True)
        self.procs.append(relay)
        if relay.stdout.readline().strip() != "ready":
            raise RuntimeError("relay did not start")
        return sbx, helper, enter, relay

    def proxycpu(self):
        a = self.args
        nbytes = a.proxy_mib << 20
        res = {"mib": a.proxy_mib, "rows": [], "sandboxes": []}
        current = None
        try:
            # get and put alternate, so that both directions have rows even if a helper ends early.
            for mode in [m for _ in range(a.proxy_repeats) for m in ("get", "put")]:
                for via in ("kiln-egress", "relay", "direct"):
                    if current is None:
                        current = self.proxy_sandbox()
                        res["sandboxes"].append({"helper_pid": current[1], "transfers_through_helper": 0})
                    sbx, helper, enter, relay = current
                    addr, port, pid = {"kiln-egress": (SERVER, 80, helper), "relay": (GATEWAY, 15002, relay.pid),
                                       "direct": (SERVER, 8080, None)}[via]
                    c0, h0 = proc_cpu(pid) if pid else None, host_stat()
                    r = subprocess.run([*enter, sys.executable, "-c", CLIENT, addr, str(port), a.name, mode, str(nbytes)],
                                       capture_output=True, text=True, timeout=600)
                    c1, h1 = proc_cpu(pid) if pid else None, host_stat()
                    try:
                        cr = json.loads(r.stdout.strip().splitlines()[-1])
                    except (ValueError, IndexError):
                        cr = {"error": r.stderr[-400:]}
                    row = {"mode": mode, "via": via, **cr, "host": host_delta(h0, h1), "sandbox": len(res["sandboxes"])}
                    if via == "kiln-egress":
                        res["sandboxes"][-1]["transfers_through_helper"] += 1
                    if cr.get("seconds") and cr.get("bytes") == nbytes and (pid is None or c1 is not None):
                        row["mb_per_s"] = round(nbytes / 1e6 / cr["seconds"], 1)
                        if pid:
                            row["cpu_s"] = round(c1 - c0, 2)
                            row["cpu_s_per_gib"] = round((c1 - c0) / (nbytes / (1 << 30)), 2)
                    else:
                        row["error"] = row.get("error") or f"moved {cr.get('bytes')} of {nbytes}"
                    res["rows"].append(row)
                    log(f"  proxycpu {mode} via {via}: {row.get('mb_per_s')} MB/s, CPU {row.get('cpu_s')} s "
                        f"({row.get('cpu_s_per_gib')} s/GiB), host busy {row['host']['busy_share']}"
                        + (f", ERROR {row['error']}" if row.get("error") else ""))
                    if proc_cpu(helper) is None:  # the helper ended: note it, go on in a new sandbox
                        log(f"  kiln-egress {helper} is gone after {res['sandboxes'][-1]['transfers_through_helper']} "
                            "transfers through it")
                        res["sandboxes"][-1]["helper_ended"] = True
                        res["sandboxes"][-1]["stderr"] = self.end_proxy_sandbox(current)
                        current = None
        finally:
            if current:
                res["sandboxes"][-1]["stderr"] = self.end_proxy_sandbox(current)
        return res

    def end_proxy_sandbox(self, current):
        sbx, helper, enter, relay = current
        self.stop(relay)
        sh(*enter, "nft", "delete", "table", "ip", self.table, check=False)
        self.stop(sbx)
        # kiln-egress writes to kiln run's stderr: keep what it said.
        return sbx.stderr.read()[-2000:] if sbx.stderr else ""

    # -- flood ------------------------------------------------------------------------------------
    @staticmethod
    def host_veths():
        return {n for n in os.listdir("/sys/class/net") if n.startswith("kiln-h")}

    @staticmethod
    def veth_rx(name):
        """What a sandbox's namespace sent out to the host (its host veth's rx): (packets, bytes)."""
        try:
            return tuple(int(open(f"/sys/class/net/{name}/statistics/{k}").read()) for k in ("rx_packets", "rx_bytes"))
        except OSError:
            return None

    def b_run(self, condition, a_proc, a_veth=None):
        a = self.args
        script = "; ".join([f"/tmp/netio conns {SERVER} 80 {a.name} 1"] + [f"/tmp/netio put {SERVER} 80 {a.name} {a.kib}"] * a.repeats)
        mark, udp0, h0 = self.mark(), self.last_udp(), host_stat()
        v0 = self.veth_rx(a_veth) if a_veth else None
        a_cpu0 = tree_cpu(a_proc.pid) if a_proc else None
        l0 = open("/proc/loadavg").read().strip()
        t0 = time.monotonic()
        p = self.kiln_run(["--net"], script)
        b_cpu = 0.0
        while p.poll() is None and time.monotonic() - t0 < a.test_timeout:
            b_cpu = max(b_cpu, tree_cpu(p.pid))  # the VMM is gone once kiln run exits: keep the last sample
            time.sleep(0.5)
        out, err = p.communicate(timeout=30)
        udp1, h1 = self.last_udp(), host_stat()
        v1 = self.veth_rx(a_veth) if a_veth else None
        r = {"condition": condition, "exit": p.returncode, "wall_s": round(time.monotonic() - t0, 1),
             "put_kib_per_s": self.parse_guest(out)["put_kib_per_s"], "server": self.events_since(mark, "put"),
             "host": host_delta(h0, h1), "loadavg_before": l0, "loadavg_after": open("/proc/loadavg").read().strip(),
             "b_cpu_s_sampled": round(b_cpu, 2)}
        if a_proc:
            r["a_cpu_s"] = round(tree_cpu(a_proc.pid) - a_cpu0, 2)
        # The host's busy CPU in the window less B's and A's VMMs: others' builds and VMs, and the host
        # kernel's own network work (a run with much of it did not measure these sandboxes alone).
        busy = sum(v for k, v in r["host"]["cpu_s"].items() if k not in ("idle", "iowait"))
        r["other_cpu_s"] = round(busy - b_cpu - max(0.0, r.get("a_cpu_s") or 0.0), 1)
        dt = udp1["t"] - udp0["t"]
        if condition == "a-flood" and dt > 0:
            r["flood_at_sink"] = {"datagrams_per_s": round((udp1["datagrams"] - udp0["datagrams"]) / dt),
                                  "mb_per_s": round((udp1["bytes"] - udp0["bytes"]) / 1e6 / dt, 2)}
        if v0 and v1 and r["wall_s"] > 0:
            r["a_out_of_its_namespace"] = {"packets_per_s": round((v1[0] - v0[0]) / r["wall_s"]),
                                           "mb_per_s": round((v1[1] - v0[1]) / 1e6 / r["wall_s"], 2), "veth": a_veth}
        if p.returncode != 0:
            r["stderr"] = err[-600:]
        log(f"  flood {condition}: B put {r['put_kib_per_s']} KiB/s, host busy {r['host']['busy_share']}"
            + (f", A's flood at the sink {r.get('flood_at_sink')}" if "flood_at_sink" in r else ""))
        return r

    def flood(self):
        a = self.args
        runs = []
        for i in range(a.flood_rounds):
            log(f"flood round {i + 1}/{a.flood_rounds}: B solo")
            runs.append(self.b_run("solo", None))
            log("  B beside A idle")
            aproc = self.kiln_run(["--net"], "echo kb-up; exec sleep 900", wait_line="kb-up")
            try:
                time.sleep(2)
                runs.append(self.b_run("a-idle", aproc))
            finally:
                self.stop(aproc)
            for size in (int(x) for x in a.flood_sizes.split(",")):
                log(f"  B beside A flooding ({size}-byte datagrams)")
                before = self.host_veths()
                aproc = self.kiln_run(["--net"], f"echo kb-up; exec /tmp/netio flood {SERVER} 9 {a.flood_seconds} {size}",
                                      wait_line="kb-up")
                try:
                    time.sleep(3)
                    new = sorted(self.host_veths() - before)
                    r = self.b_run("a-flood", aproc, new[0] if len(new) == 1 else None)
                    r["flood_datagram_bytes"] = size
                    runs.append(r)
                finally:
                    self.stop(aproc)
            for r in runs:
                r.setdefault("round", i + 1)
        return runs


def med(v):
    return boot.med([x for x in v if x is not None])


def summarize(result):
    lines = []
    rounds = result.get("paths") or []
    names = [p for p in (result["config"]["paths"].split(",")) if rounds]

    def collect(path, key):
        vals = []
        for rnd in rounds:
            r = rnd.get(path, {})
            if key in ("get_kib_per_s", "put_kib_per_s"):
                vals += r.get(key, [])
            elif key == "first_connection_ms":
                vals.append(r.get(key))
            elif r.get("conns"):
                vals.append(r["conns"][key])
        return vals
    if rounds:
        lines.append("| path | first connection ms | connect() ms | request to first byte ms | get KiB/s | put KiB/s | "
                     "first byte vs raw | get vs raw | put vs raw |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        raw = {k: med(collect("raw", k)) for k in ("connect_ms_median", "first_byte_ms_median", "get_kib_per_s", "put_kib_per_s")}
        table = []
        for path in names:
            row = {k: med(collect(path, k)) for k in raw}
            row["path"] = path
            row["first_connection_ms"] = med(collect(path, "first_connection_ms"))
            for k in ("first_byte_ms_median", "get_kib_per_s", "put_kib_per_s"):
                row[k + "_vs_raw"] = round(row[k] / raw[k], 2) if row[k] and raw.get(k) else None
            table.append(row)
            lines.append(f"| {path} | {boot.fmt(row['first_connection_ms'], '.0f')} | {boot.fmt(row['connect_ms_median'], '.1f')} | {boot.fmt(row['first_byte_ms_median'], '.1f')} "
                         f"| {boot.fmt(row['get_kib_per_s'], '.0f')} | {boot.fmt(row['put_kib_per_s'], '.0f')} "
                         f"| {boot.fmt(row['first_byte_ms_median_vs_raw'], '.2f')} | {boot.fmt(row['get_kib_per_s_vs_raw'], '.2f')} "
                         f"| {boot.fmt(row['put_kib_per_s_vs_raw'], '.2f')} |")
        result["summary_paths"] = table
    pc = result.get("proxycpu")
    if pc and pc.get("rows"):
        lines.append("")
        lines.append(f"| {pc['mib']} MiB through (median of {result['config']['proxy_repeats']}) | direction | MB/s "
                     "| its CPU s | CPU s/GiB | host busy | vs relay (CPU/GiB) |")
        lines.append("|---|---|---:|---:|---:|---:|---:|")
        pcs = {}
        for mode in ("get", "put"):
            for via in ("kiln-egress", "relay", "direct"):
                rs = [r for r in pc["rows"] if r["mode"] == mode and r["via"] == via]
                pcs[(mode, via)] = {k: med([r.get(k) for r in rs]) for k in ("mb_per_s", "cpu_s", "cpu_s_per_gib")}
                pcs[(mode, via)]["busy"] = med([r["host"]["busy_share"] for r in rs])
                pcs[(mode, via)]["runs"] = [r.get("cpu_s_per_gib") or r.get("mb_per_s") for r in rs]
        for (mode, via), row in pcs.items():
            relay = pcs[(mode, "relay")]
            ratio = (round(row["cpu_s_per_gib"] / relay["cpu_s_per_gib"], 2)
                     if row.get("cpu_s_per_gib") and relay.get("cpu_s_per_gib") else None)
            row["cpu_vs_relay"] = ratio
            lines.append(f"| {via} | {'server → client' if mode == 'get' else 'client → server'} "
                         f"| {boot.fmt(row.get('mb_per_s'), '.0f')} | {boot.fmt(row.get('cpu_s'), '.2f')} "
                         f"| {boot.fmt(row.get('cpu_s_per_gib'), '.2f')} | {boot.fmt(row['busy'], '.2f')} "
                         f"| {boot.fmt(ratio, '.2f')} |")
        result["summary_proxycpu"] = [{"mode": m, "via": v, **r} for (m, v), r in pcs.items()]
    fl = result.get("flood")
    if fl:
        def key(r):
            return f"a-flood-{r['flood_datagram_bytes']}" if r["condition"] == "a-flood" else r["condition"]
        order = []
        for r in fl:
            if key(r) not in order:
                order.append(key(r))
        by = {k: [v for r in fl if key(r) == k for v in r["put_kib_per_s"]] for k in order}
        s = {k: med(v) for k, v in by.items()}
        lines.append("")
        lines.append("| B's put (guest → fake internet), beside | KiB/s, median | runs | host busy | B's VMM CPU s (whole run) "
                     "| A's VMM CPU s (same window) | other CPU s (same window) | A's flood at the sink |")
        lines.append("|---|---:|---|---:|---:|---:|---:|---|")
        for k in order:
            rs = [r for r in fl if key(r) == k]
            sink = "; ".join(f"{r['flood_at_sink']['datagrams_per_s']} datagrams/s, {r['flood_at_sink']['mb_per_s']} MB/s"
                             + (f" (out of A's namespace: {r['a_out_of_its_namespace']['packets_per_s']} packets/s, "
                                f"{r['a_out_of_its_namespace']['mb_per_s']} MB/s)" if r.get("a_out_of_its_namespace") else "")
                             for r in rs if r.get("flood_at_sink"))
            lines.append(f"| {k} | {boot.fmt(s.get(k), '.0f')} | {', '.join(format(v, '.0f') for v in by[k])} "
                         f"| {boot.fmt(med([r['host']['busy_share'] for r in rs]), '.2f')} "
                         f"| {boot.fmt(med([r.get('b_cpu_s_sampled') for r in rs]), '.1f')} "
                         f"| {boot.fmt(med([r.get('a_cpu_s') for r in rs]), '.1f')} "
                         f"| {', '.join(format(r['other_cpu_s'], '.0f') for r in rs if r.get('other_cpu_s') is not None) or '-'} "
                         f"| {sink or '-'} |")
        ratios = {}
        if s.get("a-idle") and s.get("solo"):
            ratios["a_idle_over_solo"] = round(s["a-idle"] / s["solo"], 2)
        for k in order:
            if k.startswith("a-flood") and s.get(k):
                if s.get("a-idle"):
                    ratios[f"{k}_over_a_idle"] = round(s[k] / s["a-idle"], 2)
                if s.get("solo"):
                    ratios[f"{k}_over_solo"] = round(s[k] / s["solo"], 2)
        # The same ratios within each round (B's runs a minute apart), as the host's load drifts.
        per_round = {}
        for rnd in sorted({r.get("round", 1) for r in fl}):
            m = {k: med([v for r in fl if r.get("round", 1) == rnd and key(r) == k for v in r["put_kib_per_s"]]) for k in order}
            per_round[rnd] = {f"{k}_over_{base}": round(m[k] / m[base], 2) for k in order for base in ("solo", "a-idle")
                              if k != base and m.get(k) and m.get(base) and not (k == "solo")}
            per_round[rnd]["loadavg"] = [r["loadavg_before"].split()[0] for r in fl if r.get("round", 1) == rnd]
        result["summary_flood"] = {"median_kib_per_s": s, **ratios, "per_round": per_round}
        lines.append("")
        lines.append("Ratios of the medians: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
        for rnd, v in per_round.items():
            lines.append(f"Round {rnd} (load before each B run {', '.join(v['loadavg'])}): "
                         + ", ".join(f"{k} {x:.2f}" for k, x in v.items() if k != "loadavg"))
    return "\n".join(lines)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser(description="Kiln network egress benchmark (run by net-egress.sh)")
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--kernel", default="/var/cache/kiln/kernel/vmlinux")
    ap.add_argument("--initrd", required=True, help="the bench initramfs (with /bin/netio)")
    ap.add_argument("--netio", required=True, help="the same netio binary, sent to kiln run's guests")
    ap.add_argument("--tag", default=str(os.getpid() % 100000), help="suffix of every name this run makes")
    ap.add_argument("--name", default="bench.kiln.test", help="the name the proxy paths use")
    ap.add_argument("--parts", default="paths,proxycpu,flood")
    ap.add_argument("--paths", default="raw,nat,proxy,proxy-name")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--connects", type=int, default=10)
    ap.add_argument("--kib", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--proxy-mib", type=int, default=1024)
    ap.add_argument("--proxy-repeats", type=int, default=3)
    ap.add_argument("--flood-rounds", type=int, default=1)
    ap.add_argument("--flood-seconds", type=int, default=120)
    ap.add_argument("--flood-sizes", default="1400,60000", help="A's UDP datagram sizes, one B run beside each")
    ap.add_argument("--start-timeout", type=float, default=240)
    ap.add_argument("--test-timeout", type=float, default=300)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(1))

    b = Bench(args)
    host = boot.host_info()
    result = {"benchmark": "net-egress", "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "host": host, "git": boot.git_state(root), "kiln": boot.file_id(args.kiln),
              "kiln_egress": boot.file_id(os.path.join(os.path.dirname(os.path.abspath(args.kiln)), "kiln-egress")),
              "kernel": boot.file_id(args.kernel), "initrd": boot.file_id(args.initrd), "config": vars(args),
              "addresses": {"server": SERVER, "host_side": HOST_SIDE, "tap_host": TAP_HOST, "tap_guest": TAP_GUEST},
              "loadavg": [open("/proc/loadavg").read().strip()]}
    status = 0
    log(f"load {result['loadavg'][0]}; fake internet {SERVER} in {b.ns}")
    try:
        b.setup()
        parts = args.parts.split(",")
        if "paths" in parts:
            result["paths"] = b.paths()
            result["loadavg"].append(open("/proc/loadavg").read().strip())
        if "proxycpu" in parts:
            log("proxy CPU per GiB")
            result["proxycpu"] = b.proxycpu()
            result["loadavg"].append(open("/proc/loadavg").read().strip())
        if "flood" in parts:
            result["flood"] = b.flood()
            result["loadavg"].append(open("/proc/loadavg").read().strip())
    except Exception as e:  # keep what was measured
        log(f"ERROR {e!r}")
        result["error"] = repr(e)
        status = 1
    finally:
        b.cleanup()
    result["date_end"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    table = summarize(result)
    out = args.json or os.path.join(here, "results", f"net-egress-{time.strftime('%Y-%m-%d-%H%M')}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"# Kiln network egress benchmark, {result['date']} to {result['date_end']}\n")
    print(f"Load average: {' -> '.join(l.split(' ')[0] + ' ' + l.split(' ')[1] + ' ' + l.split(' ')[2] for l in result['loadavg'])}\n")
    print(table)
    print(f"\nRaw numbers: {os.path.relpath(out)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
