#!/usr/bin/env python3
"""What a network costs a `kiln serve` create (issue 15), with the unmodified E2B SDK as the client.

Starts its own `kiln serve` (as root, so that it can give networks; loopback, fresh state
directory, warm pools off so that every kind restores its own sandbox), then for each kind of
create, --runs times after one untimed warm-up (which may make the `base-net` template):
  - plain:    Sandbox.create(template)                          no network device
  - internet: Sandbox.create(template, allow_internet_access=True)  NAT, CIDR rules only
  - domain:   Sandbox.create(template, allow_internet_access=False,
                             network={"allow_out": ["pkg.example.test"]})  plus its own kiln-egress
and times the create and the first commands.run("true") after it; each sandbox is killed
(untimed). It also takes the CPU time of the service and of its launcher (which sets networks
up) per sandbox of each kind: their own, not their children's (the launcher reaps the VMMs too,
so the ip, nft and kiln-egress it runs cannot be told apart from the guests' CPU there). No packet leaves the sandboxes: nothing is
fetched. Prints a markdown table; not run by tests.

  .venv-e2b/bin/python Benchmarks/service-network.py [--runs 5] [--kiln .build/debug/kiln]
"""

import argparse
import os
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import importlib

service = importlib.import_module("service")  # Benchmarks/service.py: the Service wrapper and helpers

KINDS = [
    ("plain", {}),
    ("internet", {"allow_internet_access": True}),
    ("domain", {"allow_internet_access": False, "network": {"allow_out": ["pkg.example.test"]}}),
]


def children(pid):
    """Children of every thread of pid (a child is listed under the thread that spawned it)."""
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_kiln = service.REPO / ".build/release/kiln"
    if not default_kiln.exists():
        default_kiln = service.REPO / ".build/debug/kiln"
    ap.add_argument("--kiln", default=os.environ.get("KILN_BIN", str(default_kiln)))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--template", default="base")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("service-network.py: run as root (networks are made by the service's launcher)")

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="kiln-svc-net-bench-"))
    svc = service.Service(args.kiln, workdir, max_sandboxes=4, warm="0")
    svc.start()
    os.environ.update(E2B_API_URL=svc.url, E2B_SANDBOX_URL=svc.url, E2B_API_KEY=svc.key)
    os.environ.pop("E2B_DEBUG", None)
    from e2b import Sandbox  # after the environment names the service

    launcher = next((p for p in children(svc.proc.pid) if "__launcher" in open(f"/proc/{p}/cmdline").read()), None)
    stats = {"service": service.ProcStats(svc.proc.pid)}
    if launcher is None:
        raise SystemExit("service-network.py: the service's launcher was not found (is this root?)")
    stats["launcher"] = service.ProcStats(launcher)
    rows = []
    try:
        for name, kwargs in KINDS:
            creates, firsts = [], []
            cpu = {k: 0.0 for k in stats}
            for i in range(args.runs + 1):
                before = {k: s.cpu_s() for k, s in stats.items()}
                t, sbx = service.timed(lambda: Sandbox.create(template=args.template, timeout=120,
                                                              request_timeout=service.TIMEOUT, **kwargs))
                try:
                    f, result = service.timed(lambda: sbx.commands.run("true", request_timeout=service.TIMEOUT))
                    if result.exit_code != 0:
                        raise SystemExit(f"{name}: `true` exited {result.exit_code}")
                finally:
                    sbx.kill()
                after = {k: s.cpu_s() for k, s in stats.items()}  # the release too: a network is made and unmade
                if i == 0:
                    service.log(f"{name}: warm-up create {t:.2f} s")
                    continue
                creates.append(t)
                firsts.append(f)
                for k in stats:
                    cpu[k] += after[k] - before[k]
            rows.append((name, service.summary(name + " create", creates), service.summary(name + " first command", firsts),
                         {k: v / args.runs for k, v in cpu.items()}))
            service.log(f"{name}: done")
    finally:
        svc.stop()

    base = rows[0][1]["p50_ms"]
    print(f"\n{args.runs} creates of each kind, `{args.kiln}`, load {open('/proc/loadavg').read().split()[:3]}\n")
    print("| create | p50 | max | vs plain | first `true` p50 | service CPU / sandbox | launcher CPU / sandbox (its own) |")
    print("|---|---|---|---|---|---|---|")
    for name, c, f, cpu in rows:
        print(f"| {name} | {c['p50_ms']:.0f} ms | {c['max_ms']:.0f} ms | {c['p50_ms'] / base:.2f}x | {f['p50_ms']:.0f} ms "
              f"| {cpu.get('service', 0) * 1000:.0f} ms | {cpu.get('launcher', 0) * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
