#!/usr/bin/env python3
"""Warm-pool hand-out latency under concurrent clients: `kiln serve --warm TEMPLATE=N`, wait until
the pool holds N ready sandboxes (and --park-wait seconds more, so that with --idle-pause they are
parked), then N clients create at once (raw HTTP, POST /v2/sandboxes); each round's sandboxes are
deleted and the pool refilled before the next. Reports p50/p99 of the client-side create latency
and whether every create was a pool hit. Not run by tests.

  python3 Benchmarks/pool-burst.py --clients 20 --rounds 3 --idle-pause 5
"""

import argparse
import importlib.util
import json
import os
import pathlib
import shutil
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("density", REPO / "Benchmarks/density.py")
density = importlib.util.module_from_spec(spec)
spec.loader.exec_module(density)


SERVICE_PHASES = {
    "request": 'kiln_api_request_seconds_{}{{route="POST /v2/sandboxes"}}',
    "wait for the manager": "kiln_sandbox_create_wait_seconds_{}",
    "create in the manager": "kiln_sandbox_create_seconds_{}",
}


def service_sums(service):
    """(sum, count) of each of the service's create-path histograms, from GET /metrics."""
    _, body = service.request("GET", "/metrics")
    values = {}
    for line in body.decode().splitlines():
        if " " in line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return {k: (values.get(m.format("sum"), 0.0), values.get(m.format("count"), 0.0)) for k, m in SERVICE_PHASES.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kiln", default=os.environ.get("KILN_BIN", str(REPO / ".build/debug/kiln")))
    ap.add_argument("--template", default="default")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle-pause", default="10")
    ap.add_argument("--park-wait", type=float, default=0, help="seconds to wait after the pool is full")
    ap.add_argument("--out", default=str(REPO / "Benchmarks/results"))
    args = ap.parse_args()

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="kiln-pool-burst-"))
    service = density.Service(args.kiln, workdir, args.idle_pause, args.clients, warm=f"{args.template}={args.clients}")
    service.start()
    latencies, statuses, made, phases = [], [], [], []
    try:
        for r in range(args.rounds):
            t0 = time.monotonic()
            metric = f'kiln_pool_sandboxes{{template="{args.template}"}}'
            while True:
                status, body = service.request("GET", "/metrics")
                line = next((l for l in body.decode().splitlines() if l.startswith(metric + " ")), None)
                if line and float(line.split()[-1]) >= args.clients:
                    break
                if time.monotonic() - t0 > 900:
                    raise SystemExit("the pool did not fill")
                time.sleep(0.5)
            density.log(f"round {r + 1}: pool full after {time.monotonic() - t0:.0f} s")
            time.sleep(args.park_wait)
            before = service_sums(service)
            barrier = threading.Barrier(args.clients)
            lock = threading.Lock()

            def client():
                barrier.wait()
                t = time.perf_counter()
                status, body = service.request("POST", "/v2/sandboxes", {"templateID": args.template, "timeout": 600})
                d = time.perf_counter() - t
                with lock:
                    latencies.append(d)
                    statuses.append(status)
                    if status == 201:
                        made.append(json.loads(body))
            threads = [threading.Thread(target=client) for _ in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            after = service_sums(service)
            # Where a create's time went, inside the service (means over this round's creates).
            phases.append({k: (after[k][0] - before[k][0]) / max(1, after[k][1] - before[k][1]) * 1000 for k in after})
            density.log(f"round {r + 1}: service-side means (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in phases[-1].items()))
            for s in list(made):
                service.delete(s)
                made.remove(s)
        _, body = service.request("GET", "/metrics")
        hits = [l for l in body.decode().splitlines() if l.startswith("kiln_pool_creates_total")]
    finally:
        for s in made:
            service.delete(s)
        service.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    ms = [1000 * x for x in latencies]
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "clients": args.clients, "rounds": args.rounds,
              "idle_pause": args.idle_pause, "park_wait": args.park_wait, "statuses": statuses,
              "p50_ms": density.quantile(ms, 0.5), "p99_ms": density.quantile(ms, 0.99), "max_ms": max(ms), "min_ms": min(ms),
              "pool_metrics": hits, "service_phase_means_ms": phases}
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"pool-burst-{time.strftime('%Y-%m-%d-%H%M')}-pause{args.idle_pause}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
