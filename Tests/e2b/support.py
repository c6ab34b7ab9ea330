"""Support for the `kiln serve` end-to-end tests (Tests/e2b): the service under test, its
tenants, bounds, and small helpers. Fixtures and hooks are in Tests/e2b/conftest.py.

The tests drive `kiln serve` with the unmodified E2B Python SDK (e2b==2.63.0).

A session fixture starts one `kiln serve` on a free loopback port with two tenants and a fresh
state directory; every test talks to it only through `from e2b import Sandbox`, as a user would.
The binary is $KILN_BIN, else .build/debug/kiln; the `base` template must exist
(Scripts/test.sh makes it with `kiln template create base --image debian`).

Guest work is expensive on hosts whose guest kernel is emulated (every guest process costs most
of a second, and the SDK runs each command as `bash -l -c`), so tests that only read share one
sandbox per module and each command does as much as one command can.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import threading
import time
import uuid

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
KILN = os.environ.get("KILN_BIN") or str(REPO / ".build" / "debug" / "kiln")

# Generous bounds: a bound only decides when a test gives up, no test asserts on time.
READY_TIMEOUT = float(os.environ.get("KILN_E2B_READY_TIMEOUT", "180"))
REQUEST_TIMEOUT = 180  # seconds, for control-plane calls (create boots or restores a VM)
COMMAND_TIMEOUT = 180  # seconds, for one commands.run

# Tenants: "acme" is the ordinary one (its key is E2B_API_KEY); "tiny" may run one sandbox.
ACME_KEY = "kiln-test-acme-" + uuid.uuid4().hex
TINY_KEY = "kiln-test-tiny-" + uuid.uuid4().hex
TINY_MAX_SANDBOXES = 1
TENANTS = {
    "tenants": [
        {"name": "acme", "apiKeys": [ACME_KEY], "maxSandboxes": 20, "maxMemoryMiB": 8192},
        {"name": "tiny", "apiKeys": [TINY_KEY], "maxSandboxes": TINY_MAX_SANDBOXES, "maxMemoryMiB": 8192},
    ]
}

READY_LINE = "kiln serve: listening on http://"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_start_time(pid: int):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[19])  # field 22 of stat: start time, to tell a reused pid apart
    except (OSError, IndexError, ValueError):
        return None


def _children_table():
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def processes_referencing(path: str):
    """Processes whose command line, working directory or open files name PATH."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        refs = [_cmdline(pid)]
        try:
            refs.append(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            pass
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    refs.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
                except OSError:
                    pass
        except OSError:
            pass
        if any(path in r for r in refs):
            found.append((pid, _cmdline(pid)))
    return found


class Service:
    """One `kiln serve` process; start() may be called again on the same state dir and port."""

    def __init__(self, workdir: pathlib.Path):
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.runtime_dir = workdir / "run"
        self.layer_dir = workdir / "layers"
        self.tenants_file = workdir / "tenants.json"
        self.log_path = workdir / "serve.log"
        for d in (self.state_dir, self.runtime_dir, self.layer_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.tenants_file.write_text(json.dumps(TENANTS, indent=2))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.starts = 0
        # Every descendant ever seen (pid, start time): the VMMs outlive a SIGKILLed service.
        self.seen = set()
        self._watch_stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def argv(self):
        return [KILN, "serve", "--listen", f"127.0.0.1:{self.port}",
                "--tenants", str(self.tenants_file), "--state-dir", str(self.state_dir)]

    def start(self):
        if not os.access(KILN, os.X_OK):
            pytest.fail(f"no kiln binary at {KILN} (build it with `swift build` or set KILN_BIN)")
        self.starts += 1
        env = dict(os.environ)
        # Sockets and write layers of this service's sandboxes under the test's own directory,
        # so that the leftover check below can tell them from other users' sandboxes.
        env["KILN_RUNTIME_DIR"] = str(self.runtime_dir)
        env["KILN_LAYER_DIR"] = str(self.layer_dir)
        log = open(self.log_path, "a")
        log.write(f"--- start {self.starts}: {' '.join(self.argv())}\n")
        log.flush()
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.PIPE, env=env, start_new_session=True)
        ready = threading.Event()
        proc = self.proc

        def pump():
            for raw in proc.stderr:
                line = raw.decode(errors="replace")
                log.write(line)
                log.flush()
                if READY_LINE in line:
                    ready.set()
            log.close()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready.wait(0.2):
            if proc.poll() is not None:
                time.sleep(0.2)  # let the pump copy the last lines
                pytest.fail(f"kiln serve exited with {proc.returncode} before it was ready:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"kiln serve printed no '{READY_LINE}...' line in {READY_TIMEOUT:.0f} s:\n{self.log_tail()}")
        self._note_descendants()

    def stop(self, sig=signal.SIGTERM, grace=30.0):
        """SIGTERM (or SIG), then SIGKILL after GRACE seconds; returns the exit status."""
        if self.proc is None:
            return None
        self._note_descendants()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def crash(self):
        """SIGKILL: the service gets no chance to clean up (its sandboxes must survive)."""
        return self.stop(sig=signal.SIGKILL, grace=30.0)

    def log_tail(self, lines=40):
        try:
            return "".join(self.log_path.read_text(errors="replace").splitlines(True)[-lines:])
        except OSError:
            return "(no log)"

    def _note_descendants(self):
        proc = self.proc
        if proc is None:
            return
        table = _children_table()
        todo = [proc.pid]
        while todo:
            pid = todo.pop()
            start = _proc_start_time(pid)
            if start is not None:
                self.seen.add((pid, start, _cmdline(pid)))
            todo.extend(table.get(pid, []))

    def _watch(self):
        while not self._watch_stop.wait(1.0):
            try:
                self._note_descendants()
            except Exception:
                pass

    def leftovers(self):
        """Processes of this service still running: descendants seen earlier, or anything
        that names its state, runtime or layer directory."""
        alive = {}
        for pid, start, cmd in self.seen:
            if _proc_start_time(pid) == start:
                alive[pid] = cmd or _cmdline(pid)
        for d in (self.state_dir, self.runtime_dir, self.layer_dir):
            for pid, cmd in processes_referencing(str(d)):
                alive[pid] = cmd
        return alive

    def close(self):
        self._watch_stop.set()
        self._watcher.join(5)


def run(sbx, cmd, **kwargs):
    """sandbox.commands.run with this suite's bounds."""
    kwargs.setdefault("timeout", COMMAND_TIMEOUT)
    kwargs.setdefault("request_timeout", REQUEST_TIMEOUT)
    return sbx.commands.run(cmd, **kwargs)


def wait_until(predicate, what, timeout=120.0, interval=0.5):
    """Polls PREDICATE until it returns a true value (returned) or TIMEOUT passes (test fails)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
