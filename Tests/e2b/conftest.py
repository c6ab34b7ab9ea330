"""Fixtures for the `kiln serve` end-to-end tests: one service per session, sandboxes per test
or per module. What the service is and how it is watched: Tests/e2b/support.py."""

import os
import pathlib
import shutil
import signal
import tempfile
import time
import uuid

import pytest
from e2b import Sandbox

from support import ACME_KEY, REQUEST_TIMEOUT, TINY_KEY, Service


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: boots extra sandboxes or moves megabytes through the guest (runs in CI too)")
    config.addinivalue_line("markers", "restart: kills and restarts `kiln serve`; run after every other test")


def pytest_collection_modifyitems(config, items):
    # A restart is visible to every sandbox of the service: keep it after the tests it could disturb.
    items.sort(key=lambda item: item.get_closest_marker("restart") is not None)


@pytest.fixture(scope="session")
def service():
    base = "/tmp" if os.path.isdir("/tmp") else None  # short paths: Unix socket names are limited
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="kiln-e2b-", dir=base))
    svc = Service(workdir)
    saved = {k: os.environ.get(k) for k in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY", "E2B_DEBUG", "E2B_DOMAIN")}
    os.environ["E2B_API_URL"] = svc.url
    os.environ["E2B_SANDBOX_URL"] = svc.url
    os.environ["E2B_API_KEY"] = ACME_KEY
    os.environ.pop("E2B_DEBUG", None)
    os.environ.pop("E2B_DOMAIN", None)
    svc.start()
    failed = None
    try:
        yield svc
    finally:
        # Kill what the tests left (a test that failed half-way), then stop the service.
        for key in (ACME_KEY, TINY_KEY):
            try:
                for info in Sandbox.list(api_key=key, request_timeout=30).next_items(request_timeout=30):
                    Sandbox.kill(info.sandbox_id, api_key=key, request_timeout=60)
            except Exception as e:  # the service may be the thing that failed
                print(f"cleanup: listing/killing sandboxes of {key[:14]}...: {e}")
        code = svc.stop()
        deadline = time.monotonic() + 30
        left = svc.leftovers()
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = svc.leftovers()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        svc.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if left:
            failed = "processes left running after kiln serve stopped:\n" + "\n".join(f"  {p} {c}" for p, c in left.items())
        elif code not in (0, -signal.SIGTERM, 128 + signal.SIGTERM):
            failed = f"kiln serve exited with {code} on SIGTERM:\n{svc.log_tail()}"
        if failed is None and os.environ.get("KILN_E2B_KEEP") != "1":
            shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        pytest.fail(failed)


@pytest.fixture
def new_sandbox(service):
    """Factory: Sandbox.create(...) with the test's bounds; kills what it made when the test ends."""
    made = []

    def create(**kwargs):
        kwargs.setdefault("request_timeout", REQUEST_TIMEOUT)
        sbx = Sandbox.create(**kwargs)
        made.append((sbx.sandbox_id, kwargs.get("api_key")))
        return sbx

    yield create
    for sandbox_id, key in made:
        try:
            Sandbox.kill(sandbox_id, request_timeout=REQUEST_TIMEOUT, **({"api_key": key} if key else {}))
        except Exception:
            pass


@pytest.fixture(scope="module")
def shared_sandbox(service):
    """One sandbox per module for tests that only read, or write under their own paths.
    Created with envs and metadata, which test_commands and test_lifecycle check."""
    tag = uuid.uuid4().hex
    sbx = Sandbox.create(
        timeout=1800,
        envs={"KILN_CREATE_ENV": "from-create"},
        metadata={"suite": "kiln-e2b", "run": tag},
        request_timeout=REQUEST_TIMEOUT,
    )
    sbx.test_tag = tag
    yield sbx
    try:
        sbx.kill(request_timeout=REQUEST_TIMEOUT)
    except Exception:
        pass


