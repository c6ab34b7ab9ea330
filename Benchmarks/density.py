#!/usr/bin/env python3
"""Density: how many idle sandboxes one `kiln serve` holds on this host, and what each costs.

Starts its own `kiln serve` (loopback, a fresh state directory, one tenant, no warm pool) with
`--idle-pause SECONDS` (0: off), creates sandboxes of --template one after another (--parallel at
a time) and, at each count in --counts (and the last one reached), after --settle seconds:
  - MemAvailable drop per sandbox since before the first create (/proc/meminfo);
  - Pss and Private_Dirty of the sandboxes' VMM processes (/proc/PID/smaps_rollup; a VMM is found
    by its console, which is a file in the service's state directory), and the service's own Pss
    (the `kiln serve` process and its launcher) per sandbox;
  - idle host CPU: utime+stime of those VMMs and the service over --window seconds, per sandbox;
  - in every --sample-every'th sandbox and the last: a file read through envd (GET /files, the
    first request after the idle window, so a parked sandbox is resumed by it), then a command
    (`echo ok` through envd's process.Process/Start): latencies and how many took over 2 s;
  - the service's GET /health latency while that happens (a thread polls it every 0.5 s).
It stops at --max, at the first create that fails (the error names the resource), or when
MemAvailable falls below --min-available MiB (other work on the host needs memory too), and says
which. Every sandbox it made is deleted at the end, and the service stopped. Not run by tests.

  python3 Benchmarks/density.py --counts 10,100 --max 100 --idle-pause 0
  python3 Benchmarks/density.py --counts 10,100 --max 1000 --idle-pause 10

Prints a markdown table; writes Benchmarks/results/density-<date>-<HHMM>.json.
"""

import argparse
import base64
import json
import os
import pathlib
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

REPO = pathlib.Path(__file__).resolve().parents[1]
READY_LINE = "kiln serve: listening on http://"
HZ = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[density.py {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def meminfo(key="MemAvailable"):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except OSError:
        return 0


def rollup(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Pss", "Private_Dirty", "Rss"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


class Service:
    def __init__(self, kiln, workdir, idle_pause, max_sandboxes, warm="0"):
        self.kiln, self.workdir, self.idle_pause, self.warm = kiln, workdir, idle_pause, warm
        self.key = "kiln-density-" + uuid.uuid4().hex
        tenants = {"tenants": [{"name": "density", "apiKeys": [self.key], "maxSandboxes": max_sandboxes,
                                "maxMemoryMiB": 256 * max_sandboxes + 4096}]}
        (workdir / "tenants.json").write_text(json.dumps(tenants))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = workdir / "state"
        self.proc = None

    def start(self):
        argv = [self.kiln, "serve", "--listen", f"127.0.0.1:{self.port}", "--tenants", str(self.workdir / "tenants.json"),
                "--state-dir", str(self.state), "--warm", self.warm, "--idle-pause", str(self.idle_pause)]
        log_file = open(self.workdir / "serve.log", "a")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.PIPE,
                                     start_new_session=True)
        ready = threading.Event()

        def pump():
            for raw in self.proc.stderr:
                line = raw.decode(errors="replace")
                log_file.write(line)
                log_file.flush()
                if READY_LINE in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        t0 = time.monotonic()
        while not ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() - t0 > 900:
                # Not left running behind the failure (its own session: the whole group).
                if self.proc.poll() is None:
                    os.killpg(self.proc.pid, signal.SIGTERM)
                    self.proc.wait(timeout=60)
                raise SystemExit(f"kiln serve did not become ready; log: {self.workdir / 'serve.log'}")

    def request(self, method, path, body=None, headers=None, timeout=120):
        h = {"X-API-KEY": self.key}
        h.update(headers or {})
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            h.setdefault("content-type", "application/json")
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def create(self, template):
        status, body = self.request("POST", "/v2/sandboxes", {"templateID": template, "timeout": 3600})
        if status != 201:
            raise RuntimeError(f"create answered {status}: {body.decode(errors='replace')[:300]}")
        return json.loads(body)

    def run(self, sandbox, script):
        """`sh -c script` through envd; returns (stdout, exit code)."""
        msg = json.dumps({"process": {"cmd": "/bin/sh", "args": ["-c", script]}}).encode()
        envelope = b"\0" + len(msg).to_bytes(4, "big") + msg
        status, body = self.request("POST", "/process.Process/Start", envelope, timeout=60, headers={
            "e2b-sandbox-id": sandbox["sandboxID"], "x-access-token": sandbox.get("envdAccessToken") or "",
            "content-type": "application/connect+json", "connect-protocol-version": "1"})
        out, code, i = b"", None, 0
        while i + 5 <= len(body):
            flags, n = body[i], int.from_bytes(body[i + 1:i + 5], "big")
            chunk = body[i + 5:i + 5 + n]
            i += 5 + n
            if flags != 0:
                continue
            event = json.loads(chunk).get("event", {})
            if "data" in event and "stdout" in event["data"]:
                out += base64.b64decode(event["data"]["stdout"])
            if "end" in event:
                code = event["end"].get("exitCode", 0)
        return out.decode(errors="replace"), code

    def read_file(self, sandbox, path):
        """GET /files through envd: the agent answers without starting a guest process."""
        return self.request("GET", "/files?path=" + urllib.request.quote(path) + "&username=root", timeout=60, headers={
            "e2b-sandbox-id": sandbox["sandboxID"], "x-access-token": sandbox.get("envdAccessToken") or ""})

    def delete(self, sandbox):
        return self.request("DELETE", f"/sandboxes/{sandbox['sandboxID']}", timeout=120)[0]

    def pids(self):
        """The service and its launcher: this process's children in the service's session."""
        out = [self.proc.pid]
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    with open(f"/proc/{p}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    if int(fields[1]) == self.proc.pid and open(f"/proc/{p}/comm").read().strip() != "kiln-vmm":
                        out.append(int(p))
                except OSError:
                    pass
        return out

    def vmm_pids(self):
        """kiln-vmm processes whose console is a file in this service's state directory."""
        mine = []
        prefix = str(self.state)
        for p in os.listdir("/proc"):
            if not p.isdigit():
                continue
            try:
                if open(f"/proc/{p}/comm").read().strip() != "kiln-vmm":
                    continue
                if os.readlink(f"/proc/{p}/fd/1").startswith(prefix):
                    mine.append(int(p))
            except OSError:
                pass
        return mine

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class HealthProbe(threading.Thread):
    def __init__(self, service):
        super().__init__(daemon=True)
        self.service, self.samples, self.running = service, [], True

    def run(self):
        while self.running:
            t0 = time.perf_counter()
            try:
                req = urllib.request.Request(self.service.url + "/health")
                urllib.request.urlopen(req, timeout=30).read()
                self.samples.append(time.perf_counter() - t0)
            except Exception:
                self.samples.append(30.0)
            time.sleep(0.5)

    def take(self):
        s, self.samples = self.samples, []
        return s


def quantile(values, q):
    s = sorted(values)
    return s[max(0, min(len(s) - 1, int(round(q * (len(s) - 1)))))] if s else None


def measure(service, sandboxes, base_available, window, sample_every, health):
    n = len(sandboxes)
    vmms = service.vmm_pids()
    svc = service.pids()
    available = meminfo()
    vmm_mem = [rollup(p) for p in vmms]
    svc_mem = [rollup(p) for p in svc]
    # Idle CPU over the window: no request is made meanwhile.
    before = {p: cpu_ticks(p) for p in vmms + svc}
    t0 = time.monotonic()
    time.sleep(window)
    dt = time.monotonic() - t0
    after = {p: cpu_ticks(p) for p in vmms + svc}
    vmm_cpu = sum(after[p] - before[p] for p in vmms) / HZ / dt
    svc_cpu = sum(after[p] - before[p] for p in svc) / HZ / dt
    health.take()
    # Then the commands: every sample_every'th sandbox and the last.
    picks = sorted(set(list(range(0, n, sample_every)) + [n - 1]))
    latencies, slow, wrong = [], 0, 0
    reads, reads_slow, reads_wrong = [], 0, 0
    for i in picks:
        t = time.perf_counter()
        try:
            status, body = service.read_file(sandboxes[i], "/etc/passwd")
        except Exception as e:
            status, body = 0, b""
        d = time.perf_counter() - t
        reads.append(d)
        reads_slow += d > 2.0
        reads_wrong += not (status == 200 and body.startswith(b"root:"))
    # The same sandboxes again, now awake: a command (one guest process, ~1 s of emulated kernel here).
    for i in picks:
        t = time.perf_counter()
        try:
            out, code = service.run(sandboxes[i], "echo ok")
        except Exception as e:
            out, code = str(e), None
        d = time.perf_counter() - t
        latencies.append(d)
        slow += d > 2.0
        wrong += not (out == "ok\n" and code == 0)
    h = health.take()
    row = {
        "sandboxes": n, "vmms_found": len(vmms),
        "mem_available_drop_mib_per_sandbox": (base_available - available) / 1024 / n,
        "vmm_pss_mib_mean": statistics.fmean(m.get("Pss", 0) for m in vmm_mem) / 1024 if vmm_mem else None,
        "vmm_private_dirty_mib_mean": statistics.fmean(m.get("Private_Dirty", 0) for m in vmm_mem) / 1024 if vmm_mem else None,
        "service_pss_mib": sum(m.get("Pss", 0) for m in svc_mem) / 1024,
        "service_pss_mib_per_sandbox": sum(m.get("Pss", 0) for m in svc_mem) / 1024 / n,
        "idle_cpu_pct_per_sandbox": 100 * (vmm_cpu + svc_cpu) / n,
        "idle_cpu_pct_vmms": 100 * vmm_cpu, "idle_cpu_pct_service": 100 * svc_cpu, "window_s": dt,
        "file_read_p50_ms": 1000 * quantile(reads, 0.5), "file_read_max_ms": 1000 * max(reads),
        "file_reads_over_2s": reads_slow, "file_reads_wrong": reads_wrong,
        "commands": len(picks), "command_p50_ms": 1000 * quantile(latencies, 0.5),
        "command_max_ms": 1000 * max(latencies), "commands_over_2s": slow, "commands_wrong": wrong,
        "health_p50_ms": 1000 * quantile(h, 0.5) if h else None, "health_max_ms": 1000 * max(h) if h else None,
        "mem_available_mib": available / 1024,
    }
    log(f"{n} sandboxes: {json.dumps(row)}")
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_kiln = REPO / ".build/debug/kiln"
    ap.add_argument("--kiln", default=os.environ.get("KILN_BIN", str(default_kiln)))
    ap.add_argument("--template", default="default")
    ap.add_argument("--counts", default="10,100", help="counts to measure at (and the last one reached)")
    ap.add_argument("--max", type=int, default=100)
    ap.add_argument("--idle-pause", default="10", help="kiln serve --idle-pause (0: off)")
    ap.add_argument("--parallel", type=int, default=2, help="creates at a time")
    ap.add_argument("--settle", type=float, default=20, help="seconds after the last create before measuring")
    ap.add_argument("--window", type=float, default=60, help="seconds of idle CPU measured")
    ap.add_argument("--sample-every", type=int, default=10)
    ap.add_argument("--min-available", type=int, default=6144, help="stop creating below this MemAvailable (MiB)")
    ap.add_argument("--until", help="UTC HH:MM: stop creating then (a shared host's time slot), measure, clean up")
    ap.add_argument("--out", default=str(REPO / "Benchmarks/results"))
    args = ap.parse_args()
    counts = sorted({int(c) for c in args.counts.split(",") if c})

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="kiln-density-"))
    service = Service(args.kiln, workdir, args.idle_pause, args.max)
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": os.uname().nodename,
               "cores": os.cpu_count(), "mem_total_mib": meminfo("MemTotal") // 1024, "idle_pause": args.idle_pause,
               "template": args.template, "rows": []}
    sandboxes, stopped_by = [], f"--max {args.max} reached"
    service.start()
    health = HealthProbe(service)
    health.start()
    try:
        # One create first (a template's first use may boot it); its cost is not a sandbox's.
        service.delete(service.create(args.template))
        time.sleep(5)
        base_available = meminfo()
        results["mem_available_before_mib"] = base_available / 1024
        create_times = []
        lock = threading.Lock()
        failure = []

        def one(_):
            if failure:
                return
            t = time.perf_counter()
            try:
                s = service.create(args.template)
            except Exception as e:
                failure.append(str(e))
                return
            with lock:
                sandboxes.append(s)
                create_times.append(time.perf_counter() - t)

        with ThreadPoolExecutor(args.parallel) as pool:
            targets = [c for c in counts if c < args.max] + [args.max]
            for target in targets:
                while len(sandboxes) < target and not failure:
                    if args.until and time.strftime("%H:%M", time.gmtime()) >= args.until:
                        stopped_by = f"the time slot ended (--until {args.until} UTC)"
                        break
                    if meminfo() < args.min_available * 1024:
                        stopped_by = f"MemAvailable below {args.min_available} MiB (--min-available)"
                        break
                    batch = min(args.parallel * 4, target - len(sandboxes))
                    list(pool.map(one, range(batch)))
                    if len(sandboxes) % 50 < args.parallel * 4:
                        log(f"{len(sandboxes)} sandboxes, MemAvailable {meminfo() // 1024} MiB")
                if failure:
                    stopped_by = "a create failed: " + failure[0]
                if not sandboxes:
                    break
                time.sleep(args.settle)
                row = measure(service, sandboxes, base_available, args.window, args.sample_every, health)
                row["create_p50_ms"] = 1000 * quantile(create_times, 0.5)
                row["create_max_ms"] = 1000 * max(create_times)
                results["rows"].append(row)
                if failure or stopped_by.startswith(("MemAvailable", "the time slot")):
                    break
        results["stopped_by"] = stopped_by
    finally:
        health.running = False
        log(f"deleting {len(sandboxes)} sandboxes")
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda s: service.delete(s), sandboxes))
        service.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"density-{time.strftime('%Y-%m-%d-%H%M')}-pause{args.idle_pause}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nDensity, `kiln serve --idle-pause {args.idle_pause}`, {results['date']}, {results['host']}; stopped by: {stopped_by}\n")
    print("| sandboxes | MemAvailable drop MiB/sb | VMM Pss MiB | VMM private dirty MiB | service Pss MiB/sb | idle CPU %/sb: VMMs + service | file read p50 / max ms | over 2 s | command p50 / max ms | over 2 s | /health p50 / max ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results["rows"]:
        print(f"| {r['sandboxes']} | {r['mem_available_drop_mib_per_sandbox']:.2f} | {r['vmm_pss_mib_mean'] or 0:.2f} | "
              f"{r['vmm_private_dirty_mib_mean'] or 0:.2f} | {r['service_pss_mib_per_sandbox']:.2f} | "
              f"{r['idle_cpu_pct_vmms'] / r['sandboxes']:.4f} + {r['idle_cpu_pct_service'] / r['sandboxes']:.4f} | {r['file_read_p50_ms']:.0f} / {r['file_read_max_ms']:.0f} | "
              f"{r['file_reads_over_2s']}/{r['commands']} | {r['command_p50_ms']:.0f} / {r['command_max_ms']:.0f} | "
              f"{r['commands_over_2s']}/{r['commands']} | {r['health_p50_ms'] or 0:.0f} / {r['health_max_ms'] or 0:.0f} |")
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()
