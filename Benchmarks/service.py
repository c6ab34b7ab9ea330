#!/usr/bin/env python3
"""`kiln serve` benchmark, with the unmodified E2B Python SDK (e2b==2.63.0) as the client.

Starts its own `kiln serve` on a free loopback port (a fresh state directory, one tenant), then:
  1. Sandbox.create() latency, --runs times (each sandbox killed afterwards, untimed), with the
     warm pools off (--warm 0); then the same against a second `kiln serve` with a warm pool of
     one for the template (--warm TEMPLATE=1), each create waiting (untimed) for the pool's
     refill first, so that every timed create is a hand-out; and create + a first command so.
  2. Sandbox.create() then commands.run("true"): the time until a first command has run.
  3. commands.run("true") round trips in one running sandbox (after one warm-up run).
  4. --clients concurrent clients, each create -> commands.run("true") -> kill; per-client
     latency and the wall time of the whole burst.
  5. The service process's RSS (VmRSS, VmHWM) and CPU time (utime+stime from /proc/PID/stat)
     per operation of each phase. Only `kiln serve` itself: the sandboxes' VMM processes are not
     counted.
  6. Baselines in the same run: `kiln run -- true` (default image and template) and
     `kiln run --template base -- /bin/bash -l -c true` (the image and command form the SDK uses).

Run with the SDK's virtual environment (Scripts/test-e2b.sh makes .venv-e2b and the `base`
template):  .venv-e2b/bin/python Benchmarks/service.py [--runs 10] [--clients 20]
Prints markdown tables; writes Benchmarks/results/service-<date>-<HHMM>.json. Not run by tests.
"""

import argparse
import concurrent.futures
import datetime
import json
import math
import os
import pathlib
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

REPO = pathlib.Path(__file__).resolve().parents[1]
READY_LINE = "kiln serve: listening on http://"
TIMEOUT = 300  # seconds: a bound for one call, not a measurement


def log(msg):
    print(f"[service.py {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def quantile(values, q):
    """Nearest-rank quantile (p99 of 10 values is the largest)."""
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def summary(name, seconds, note=""):
    ms = [v * 1000 for v in seconds]
    return {"name": name, "n": len(ms), "p50_ms": quantile(ms, 0.50), "p99_ms": quantile(ms, 0.99),
            "mean_ms": statistics.fmean(ms), "min_ms": min(ms), "max_ms": max(ms), "note": note}


class ProcStats:
    """CPU time and memory of one process, from /proc."""

    def __init__(self, pid):
        self.pid = pid
        self.tick = os.sysconf("SC_CLK_TCK")

    def cpu_s(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.tick  # utime + stime

    def memory_kib(self):
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
        return out


class Service:
    def __init__(self, kiln, workdir, max_sandboxes, warm="0"):
        self.kiln = kiln
        self.warm = warm
        self.workdir = workdir
        self.key = "kiln-bench-" + uuid.uuid4().hex
        tenants = {"tenants": [{"name": "bench", "apiKeys": [self.key], "maxSandboxes": max_sandboxes,
                                "maxMemoryMiB": 256 * max_sandboxes + 4096}]}
        (workdir / "tenants.json").write_text(json.dumps(tenants))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        argv = [self.kiln, "serve", "--listen", f"127.0.0.1:{self.port}", "--tenants",
                str(self.workdir / "tenants.json"), "--state-dir", str(self.workdir / "state"), "--warm", self.warm]
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
            if self.proc.poll() is not None or time.monotonic() - t0 > TIMEOUT * 3:
                # Not left running behind the failure (its own session: the whole group).
                if self.proc.poll() is None:
                    os.killpg(self.proc.pid, signal.SIGTERM)
                    self.proc.wait(timeout=60)
                raise SystemExit(f"kiln serve did not become ready; log: {self.workdir / 'serve.log'}")
        return time.monotonic() - t0

    def metric(self, line):
        """The value of one sample line of GET /metrics, or None."""
        import urllib.request
        req = urllib.request.Request(self.url + "/metrics", headers={"X-API-KEY": self.key})
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            for text in r.read().decode().splitlines():
                if text.startswith(line + " "):
                    return float(text.rsplit(" ", 1)[1])
        return None

    def wait_for_pool(self, template, n=1):
        t0 = time.monotonic()
        while self.metric(f'kiln_pool_sandboxes{{template="{template}"}}') != n:
            if time.monotonic() - t0 > TIMEOUT:
                raise SystemExit(f"the warm pool of {template} did not fill; log: {self.workdir / 'serve.log'}")
            time.sleep(0.05)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def kiln_run_baseline(kiln, argv, runs):
    times = []
    # One untimed run first: the first `kiln run` of an image makes its automatic template (a boot).
    for i in range(runs + 1):
        t, result = timed(lambda: subprocess.run([kiln, "run", *argv], stdin=subprocess.DEVNULL,
                                                 capture_output=True, timeout=TIMEOUT))
        if result.returncode != 0:
            raise SystemExit(f"kiln run {' '.join(argv)} failed ({result.returncode}): {result.stderr.decode()[-300:]}")
        if i:
            times.append(t)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_kiln = REPO / ".build/release/kiln"
    if not default_kiln.exists():
        default_kiln = REPO / ".build/debug/kiln"
    ap.add_argument("--kiln", default=os.environ.get("KILN_BIN", str(default_kiln)))
    ap.add_argument("--runs", type=int, default=10, help="samples per sequential measurement")
    ap.add_argument("--clients", type=int, default=20, help="concurrent clients in the burst")
    ap.add_argument("--template", default="base")
    ap.add_argument("--out", default=str(REPO / "Benchmarks/results"))
    args = ap.parse_args()

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="kiln-bench-", dir="/tmp"))
    svc = Service(args.kiln, workdir, max_sandboxes=args.clients + 4)
    os.environ.update(E2B_API_URL=svc.url, E2B_SANDBOX_URL=svc.url, E2B_API_KEY=svc.key)
    os.environ.pop("E2B_DEBUG", None)
    from e2b import Sandbox  # after the environment names the service

    def create():
        return Sandbox.create(template=args.template, timeout=600, request_timeout=TIMEOUT)

    def run_true(sbx):
        return sbx.commands.run("true", timeout=TIMEOUT, request_timeout=TIMEOUT)

    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
               "kernel": platform.release(), "kiln": args.kiln, "runs": args.runs, "clients": args.clients,
               "template": args.template, "latency": [], "service": []}
    log(f"starting kiln serve on {svc.url}")
    results["ready_s"] = svc.start()
    stats = ProcStats(svc.proc.pid)
    results["service_idle_kib"] = stats.memory_kib()

    def phase(name, ops, fn):
        cpu0 = stats.cpu_s()
        out = fn()
        cpu = stats.cpu_s() - cpu0
        results["service"].append({"phase": name, "ops": ops, "cpu_ms_per_op": cpu * 1000 / ops,
                                   **stats.memory_kib()})
        return out

    try:
        log(f"1. Sandbox.create() x{args.runs}")

        def creates():
            times = []
            for _ in range(args.runs):
                t, sbx = timed(create)
                times.append(t)
                sbx.kill()
            return times
        results["latency"].append(summary("Sandbox.create()", phase("create", args.runs, creates), note="pool off"))

        log(f"2. create + commands.run('true') x{args.runs}")

        def create_and_run():
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                sbx = create()
                run_true(sbx)
                times.append(time.perf_counter() - t0)
                sbx.kill()
            return times
        results["latency"].append(summary("create + commands.run(\"true\")",
                                          phase("create+run", args.runs, create_and_run), note="pool off"))

        log(f"3. commands.run('true') x{args.runs} in one sandbox")
        sbx = create()
        run_true(sbx)  # warm-up: the guest's first bash -l start reads its files in

        def round_trips():
            return [timed(lambda: run_true(sbx))[0] for _ in range(args.runs)]
        results["latency"].append(summary("commands.run(\"true\"), running sandbox",
                                          phase("run", args.runs, round_trips)))
        sbx.kill()

        log(f"4. {args.clients} concurrent clients: create, run, kill")

        def client():
            t0 = time.perf_counter()
            s = create()
            run_true(s)
            s.kill()
            return time.perf_counter() - t0

        def burst():
            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
                futures = [pool.submit(client) for _ in range(args.clients)]
                done, errors = [], []
                for f in futures:
                    try:
                        done.append(f.result())
                    except Exception as e:  # reported, not fatal: a burst may hit limits
                        errors.append(repr(e)[:200])
            return time.perf_counter() - t0, done, errors
        wall, done, errors = phase("concurrent", args.clients, burst)
        results["concurrent"] = {"wall_s": wall, "ok": len(done), "errors": errors}
        if done:
            results["latency"].append(summary(f"{args.clients} clients: create+run+kill each", done,
                                              note=f"burst wall {wall:.1f} s, {len(errors)} errors"))
        results["service_end_kib"] = stats.memory_kib()
    finally:
        log("stopping kiln serve")
        svc.stop()

    log(f"1b. Sandbox.create() x{args.runs} from a warm pool (a second kiln serve, --warm {args.template}=1)")
    pooldir = workdir / "pool"
    pooldir.mkdir()
    warm = Service(args.kiln, pooldir, max_sandboxes=4, warm=f"{args.template}=1")
    warm.port, svc.port = svc.port, None  # the SDK's URL stays the same
    warm.url, warm.key = svc.url, svc.key
    (pooldir / "tenants.json").write_text((workdir / "tenants.json").read_text())
    warm.start()
    try:
        def pooled_creates(with_command):
            times = []
            for _ in range(args.runs):
                warm.wait_for_pool(args.template)
                t0 = time.perf_counter()
                sbx = create()
                if with_command:
                    run_true(sbx)
                times.append(time.perf_counter() - t0)
                sbx.kill()
            return times
        results["latency"].append(summary("Sandbox.create()", pooled_creates(False), note="from the warm pool"))
        results["latency"].append(summary("create + commands.run(\"true\")", pooled_creates(True), note="from the warm pool"))
        hits = warm.metric(f'kiln_pool_creates_total{{template="{args.template}",result="hit"}}')
        results["pool_hits"] = hits
    finally:
        warm.stop()

    log(f"6. baselines: kiln run x{args.runs}")
    results["latency"].append(summary("kiln run -- true", kiln_run_baseline(args.kiln, ["--", "true"], args.runs)))
    results["latency"].append(summary(f"kiln run --template {args.template} -- /bin/bash -l -c true",
                                      kiln_run_baseline(args.kiln, ["--template", args.template, "--",
                                                                    "/bin/bash", "-l", "-c", "true"], args.runs)))

    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"service-{time.strftime('%Y-%m-%d-%H%M')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n`kiln serve` with the e2b {version('e2b')} SDK, {results['date']}, {results['host']}\n")
    print("| measurement | n | p50 ms | p99 ms | mean ms | note |")
    print("|---|---:|---:|---:|---:|---|")
    for r in results["latency"]:
        print(f"| {r['name']} | {r['n']} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['mean_ms']:.0f} | {r['note']} |")
    print("\n| service phase | ops | CPU ms/op | VmRSS MiB | VmHWM MiB |")
    print("|---|---:|---:|---:|---:|")
    idle = results["service_idle_kib"]
    print(f"| idle after start | - | - | {idle.get('VmRSS', 0) / 1024:.1f} | {idle.get('VmHWM', 0) / 1024:.1f} |")
    for s in results["service"]:
        print(f"| {s['phase']} | {s['ops']} | {s['cpu_ms_per_op']:.1f} | {s.get('VmRSS', 0) / 1024:.1f} | {s.get('VmHWM', 0) / 1024:.1f} |")
    print(f"\nJSON: {path}")


def version(name):
    try:
        import importlib.metadata
        return importlib.metadata.version(name)
    except Exception:
        return "?"


if __name__ == "__main__":
    main()
