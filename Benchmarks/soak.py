#!/usr/bin/env python3
"""Soak: N create/exec/destroy cycles through `kiln run` and N through `kiln serve`, then what is
left behind. Not part of the tests; run as root (the jailed VMM, cgroups):

    Benchmarks/soak.sh [--runs 50] [--service-runs 50] [--run-args "--net"] [--kiln .build/debug/kiln]

Phase 1: `kiln run [--run-args] -- true` N times, from the automatic template of the default image
(made, once, by a first untimed cycle if missing). Phase 2: its own `kiln serve` on a free loopback
port (a fresh state directory, one tenant, no warm pool): POST /v2/sandboxes (template "default",
made with `kiln template create default` if missing), `true` through envd's process.Process/Start,
DELETE, N times over raw HTTP, after one untimed warm-up cycle. Every kiln gets a fresh
KILN_RUNTIME_DIR of this run.

Each phase counts before (after its warm-up) and after: the processes below this script (kiln
runs, the VMMs, the service and its launcher), their threads and zombies and network namespaces,
the service's open descriptors (service and launcher), the cgroups and jail directories of this
script's VMs (a VM's id starts with its supervisor's pid, which tells them from other work on a
shared host), mounts under the runtime and state directories, TAP devices in the host namespace,
files under the runtime, cache and state directories, and MemAvailable. Host-wide counts (every
process, thread, Kiln cgroup, jail, mount and network namespace) are shown but not judged.

Prints one before/after/delta table per phase and exits 1 when anything judged grew: every count
must come back to its value before (the cache may grow only in the warm-up, which is before
"before"), and MemAvailable may drop by at most --mem-slack MiB (on a shared host, other work
moves it too).
"""

import argparse
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("density", REPO / "Benchmarks/density.py")
density = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(density)


def log(msg):
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def proc_entries():
    for p in os.listdir("/proc"):
        if p.isdigit():
            yield int(p)


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def status_field(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def descendants(root):
    """Every process below `root` (this script: its kiln runs, their VMMs, the service, its launcher
    and VMMs), so that other work on a shared host is not counted."""
    children = {}
    for pid in proc_entries():
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(pid)
        except (OSError, ValueError, IndexError):
            pass
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def count_files(root):
    n = 0
    for _, dirs, files in os.walk(root):
        n += len(files) + len(dirs)
    return n


# Every `kiln` process this script started (kiln run, kiln serve and its launcher): a VM's id,
# and so its jail directory and cgroup, is `<supervisor pid>-<random>` (docs/security.md), which
# tells this script's leftovers from those of other work on the host.
SUPERVISORS = set()


def mine(name):
    head = name.split("-", 1)[0].lstrip("d")
    return "-" in name and head.isdigit() and int(head) in SUPERVISORS


def kiln_cgroups():
    """(ours, all): leaf directories below every cgroup directory named `kiln` (cgroup v1: one
    per controller)."""
    ours = total = 0
    tops = [p for p in ("/sys/fs/cgroup", "/run/kiln/cgroup") if os.path.isdir(p)]
    for top in tops:
        for path, dirs, _ in os.walk(top):
            if os.path.basename(path) == "kiln":
                for _, leaves, _ in os.walk(path):
                    total += len(leaves)
                    ours += sum(1 for leaf in leaves if mine(leaf))
                dirs[:] = []
    return ours, total


def jail_dirs():
    base = "/run/kiln/jail"
    names = os.listdir(base) if os.path.isdir(base) else []
    return sum(1 for n in names if mine(n)), len(names)


def mounts_under(prefixes):
    n = 0
    for line in open("/proc/self/mountinfo"):
        point = line.split()[4]
        n += any(point == p or point.startswith(p.rstrip("/") + "/") for p in prefixes)
    return n


def taps():
    n = 0
    for name in os.listdir("/sys/class/net"):
        if os.path.exists(f"/sys/class/net/{name}/tun_flags"):
            n += 1
    return n


def net_namespaces():
    seen = set()
    for pid in proc_entries():
        try:
            seen.add(os.readlink(f"/proc/{pid}/ns/net"))
        except OSError:
            pass
    return len(seen)


def named_netns():
    return len(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else 0


def mem_available_mib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 0


def fd_targets(pids):
    out = []
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    out.append(f"{pid}:{fd} -> {os.readlink(f'/proc/{pid}/fd/{fd}')}")
                except OSError:
                    pass
        except OSError:
            pass
    return out


def fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def snapshot(args, service=None, state_dir=None):
    kiln = descendants(os.getpid())
    if service is not None:
        kiln = [p for p in kiln if p not in service.pids()]  # the service's own are counted apart
    threads = sum(int(status_field(p, "Threads") or 0) for p in kiln)
    zombies = sum(1 for p in kiln if (status_field(p, "State") or "").startswith("Z"))
    all_pids = list(proc_entries())
    cgroups, all_cgroups = kiln_cgroups()
    jails, all_jails = jail_dirs()
    own_net = set()
    for p in kiln:
        try:
            own_net.add(os.readlink(f"/proc/{p}/ns/net"))
        except OSError:
            pass
    ours = [args.runtime_dir] + ([str(state_dir)] if state_dir is not None else [])
    row = {
        "Kiln processes (below this script)": len(kiln),
        "Kiln threads": threads,
        "zombie processes (below this script)": zombies,
        "Kiln cgroups (of this script's VMs)": cgroups,
        "jail directories (of this script's VMs)": jails,
        f"mounts under {' and '.join(ours)}": mounts_under(ours),
        "TAP devices (host namespace)": taps(),
        "network namespaces of Kiln processes": len(own_net),
        f"files under {args.runtime_dir}": count_files(args.runtime_dir),
        f"files under {args.cache_dir}": count_files(args.cache_dir),
        "MemAvailable MiB": mem_available_mib(),
        "host processes (not judged)": len(all_pids),
        "host threads (not judged)": sum(int(status_field(p, "Threads") or 0) for p in all_pids),
        "all Kiln cgroups on the host (not judged)": all_cgroups,
        "all jail directories (not judged)": all_jails,
        "mounts, whole namespace (not judged)": sum(1 for _ in open("/proc/self/mountinfo")),
        "network namespaces in use, host (not judged)": net_namespaces(),
        "named network namespaces, ip netns (not judged)": named_netns(),
    }
    if service is not None:
        row["service processes (serve, launcher)"] = len(service.pids())
        row["service threads"] = sum(int(status_field(p, "Threads") or 0) for p in service.pids())
        row["service open fds"] = sum(fds(p) for p in service.pids())
        row["service VmRSS MiB"] = int((status_field(service.proc.pid, "VmRSS") or "0 kB").split()[0]) // 1024
    if state_dir is not None:
        row["files under the service's state dir"] = count_files(state_dir)
    return row


def settle(args, service=None, state_dir=None):
    """A count taken while a just-destroyed sandbox's VMM is still being reaped would be noise:
    wait (up to 60 s) until no Kiln process but the service's is left, then a moment more."""
    for _ in range(600):
        kiln = [p for p in descendants(os.getpid()) if service is None or p not in service.pids()]
        if not kiln:
            break
        time.sleep(0.1)
    time.sleep(1)
    return snapshot(args, service, state_dir)


JUDGED_EXCEPT = ("not judged", "MemAvailable", "service VmRSS")


def judge(before, after, args):
    grew = []
    for key, b in before.items():
        a = after.get(key, b)
        if key.startswith("MemAvailable"):
            if b - a > args.mem_slack:
                grew.append(f"{key}: dropped {b - a} MiB (more than --mem-slack {args.mem_slack})")
        elif not any(x in key for x in JUDGED_EXCEPT) and a > b:
            grew.append(f"{key}: {b} -> {a}")
    return grew


def table(title, before, after):
    print(f"\n{title}\n")
    print("| count | before | after | delta |")
    print("|---|---|---|---|")
    for key, b in before.items():
        a = after.get(key, b)
        print(f"| {key} | {b} | {a} | {a - b:+d} |")


def run_phase(args):
    argv = [args.kiln, "run"] + args.run_args.split() + ["--", "true"]

    def kiln_run():
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        SUPERVISORS.add(p.pid)
        _, err = p.communicate(timeout=600)
        return p.returncode, err

    log(f"kiln run: warm-up cycle ({' '.join(argv)}), KILN_RUNTIME_DIR={args.runtime_dir}")
    code, err = kiln_run()
    if code != 0:
        raise SystemExit(f"soak: the warm-up kiln run failed ({code}): {err.decode(errors='replace')[-500:]}")
    before = settle(args)
    failures, t0, done = 0, time.monotonic(), 0
    for i in range(args.runs):
        if args.max_seconds and time.monotonic() - t0 > args.max_seconds:
            log(f"kiln run: --max-seconds reached after {i} cycles")
            break
        code, err = kiln_run()
        done = i + 1
        if code != 0:
            failures += 1
            log(f"kiln run cycle {i + 1}: exit {code}: {err.decode(errors='replace')[-300:]}")
        if (i + 1) % 10 == 0:
            log(f"kiln run: {i + 1}/{args.runs} cycles, {time.monotonic() - t0:.0f} s")
    seconds = time.monotonic() - t0
    after = settle(args)
    return before, after, failures, seconds, done


class Service(density.Service):
    """`kiln serve` started as density.py starts it (one tenant, no warm pool, no parking), with its
    pids and those of its launcher counted as the soak's own."""

    def __init__(self, kiln, workdir):
        super().__init__(kiln, workdir, idle_pause=0, max_sandboxes=4)

    def start(self):
        super().start()
        SUPERVISORS.add(self.proc.pid)
        SUPERVISORS.update(self.pids())

    def pids(self):
        """The service and its launcher (its children that are not VMMs)."""
        out = [self.proc.pid]
        for p in proc_entries():
            try:
                with open(f"/proc/{p}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                if ppid == self.proc.pid and comm(p) != "kiln-vmm":
                    out.append(p)
            except (OSError, ValueError, IndexError):
                pass
        return out

    def cycle(self, template):
        status, body = self.request("POST", "/v2/sandboxes", {"templateID": template, "timeout": 600})
        if status != 201:
            raise RuntimeError(f"create answered {status}: {body.decode(errors='replace')[:300]}")
        sandbox = json.loads(body)
        try:
            msg = json.dumps({"process": {"cmd": "/bin/sh", "args": ["-c", "true"]}}).encode()
            status, body = self.request("POST", "/process.Process/Start", b"\0" + len(msg).to_bytes(4, "big") + msg,
                                        timeout=60, headers={
                                            "e2b-sandbox-id": sandbox["sandboxID"],
                                            "x-access-token": sandbox.get("envdAccessToken") or "",
                                            "content-type": "application/connect+json", "connect-protocol-version": "1"})
            code = None
            i = 0
            while i + 5 <= len(body):
                flags, n = body[i], int.from_bytes(body[i + 1:i + 5], "big")
                chunk = body[i + 5:i + 5 + n]
                i += 5 + n
                if flags == 0:
                    event = json.loads(chunk).get("event", {})
                    if "end" in event:
                        code = event["end"].get("exitCode", 0)
            if status != 200 or code != 0:
                raise RuntimeError(f"command answered {status}, exit code {code}")
        finally:
            deleted = self.request("DELETE", f"/sandboxes/{sandbox['sandboxID']}")[0]
        if deleted != 204:
            raise RuntimeError(f"delete answered {deleted}")


def service_phase(args):
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="kiln-soak-"))
    templates = pathlib.Path(os.environ.get("KILN_CACHE_DIR", "/var/cache/kiln")) / "templates"
    if not (templates / args.template).is_dir():
        log(f"kiln template create {args.template} (the service's template; once)")
        subprocess.run([args.kiln, "template", "create", args.template], stdin=subprocess.DEVNULL, check=True, timeout=1200)
    service = Service(args.kiln, workdir)
    log(f"kiln serve on {service.url}, state {service.state}")
    service.start()
    try:
        log("kiln serve: warm-up cycle")
        service.cycle(args.template)
        before = settle(args, service, service.state)
        fds_before = set(fd_targets(service.pids()))
        failures, t0, done = 0, time.monotonic(), 0
        for i in range(args.service_runs):
            if args.max_seconds and time.monotonic() - t0 > args.max_seconds:
                log(f"kiln serve: --max-seconds reached after {i} cycles")
                break
            done = i + 1
            try:
                service.cycle(args.template)
            except Exception as e:
                failures += 1
                log(f"service cycle {i + 1}: {e}")
            if (i + 1) % 10 == 0:
                log(f"kiln serve: {i + 1}/{args.service_runs} cycles, {time.monotonic() - t0:.0f} s")
        seconds = time.monotonic() - t0
        after = settle(args, service, service.state)
        new_fds = sorted(set(fd_targets(service.pids())) - fds_before)
        if new_fds:
            log("descriptors the service holds now and did not before: " + "; ".join(new_fds[:40]))
    finally:
        service.stop()
    # After the service's own exit: nothing of it may be left either.
    ended = settle(args)
    shutil.rmtree(workdir, ignore_errors=True)
    return before, after, ended, failures, seconds, done


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kiln", default=os.environ.get("KILN_BIN", str(REPO / ".build/debug/kiln")))
    ap.add_argument("--runs", type=int, default=50, help="kiln run cycles (0: skip)")
    ap.add_argument("--service-runs", type=int, default=50, help="kiln serve cycles (0: skip)")
    ap.add_argument("--run-args", default="", help="options for each kiln run, e.g. --net")
    ap.add_argument("--template", default="default", help="the service's templateID")
    ap.add_argument("--runtime-dir", help="KILN_RUNTIME_DIR for every kiln (default: a fresh directory of this run)")
    ap.add_argument("--cache-dir", default="/var/cache/kiln")
    ap.add_argument("--max-seconds", type=float, default=0,
                    help="end each phase's cycles after this long (0: run them all); the count reached is reported")
    ap.add_argument("--mem-slack", type=int, default=128, help="MiB MemAvailable may drop (page cache, other work)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("soak: run as root (the jailed VMM, cgroups, network namespaces)")
    if not args.runtime_dir:
        args.runtime_dir = tempfile.mkdtemp(prefix="kiln-soak-run-")
    os.environ["KILN_RUNTIME_DIR"] = args.runtime_dir
    grew = []
    if args.runs > 0:
        before, after, failures, seconds, done = run_phase(args)
        table(f"`kiln run {args.run_args + ' ' if args.run_args else ''}-- true` x{done}: {seconds:.0f} s "
              f"({seconds / max(done, 1):.2f} s a cycle), {failures} failed", before, after)
        grew += [f"kiln run: {g}" for g in judge(before, after, args)]
        if failures:
            grew.append(f"kiln run: {failures} cycles failed")
    if args.service_runs > 0:
        before, after, ended, failures, seconds, done = service_phase(args)
        table(f"`kiln serve` create / `true` / delete x{done}: {seconds:.0f} s "
              f"({seconds / max(done, 1):.2f} s a cycle), {failures} failed", before, after)
        grew += [f"kiln serve: {g}" for g in judge(before, after, args)]
        if failures:
            grew.append(f"kiln serve: {failures} cycles failed")
        # Once the service has exited, no Kiln process, cgroup, mount, TAP or netns of it remains.
        print("\nAfter `kiln serve` exited (against before its cycles; the service's own rows are gone)\n")
        print("| count | before | after exit | delta |")
        print("|---|---|---|---|")
        for key, b in before.items():
            if key in ended:
                print(f"| {key} | {b} | {ended[key]} | {ended[key] - b:+d} |")
        grew += [f"after kiln serve exited: {g}" for g in judge({k: v for k, v in before.items() if k in ended}, ended, args)]
    print()
    if grew:
        for g in grew:
            print(f"soak: GREW: {g}")
        sys.exit(1)
    print("soak: nothing grew")


if __name__ == "__main__":
    main()
