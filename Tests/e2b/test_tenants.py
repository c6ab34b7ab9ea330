"""Tenants: API keys, isolation between tenants, and the per-tenant sandbox quota."""

import httpx
import pytest
from e2b import (
    AuthenticationException,
    RateLimitException,
    Sandbox,
    SandboxNotFoundException,
    SandboxQuery,
    SandboxState,
)

from support import REQUEST_TIMEOUT, TINY_KEY, TINY_MAX_SANDBOXES


def test_other_tenant_cannot_see_or_touch_a_sandbox(shared_sandbox):
    sandbox_id = shared_sandbox.sandbox_id
    mine = SandboxQuery(metadata={"run": shared_sandbox.test_tag})
    assert [i.sandbox_id for i in Sandbox.list(query=mine).next_items()] == [sandbox_id]
    assert Sandbox.list(query=mine, api_key=TINY_KEY).next_items() == []
    assert sandbox_id not in [i.sandbox_id for i in Sandbox.list(api_key=TINY_KEY).next_items()]

    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sandbox_id, api_key=TINY_KEY)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sandbox_id, api_key=TINY_KEY)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.set_timeout(sandbox_id, 1, api_key=TINY_KEY)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.pause(sandbox_id, api_key=TINY_KEY)
    assert Sandbox.kill(sandbox_id, api_key=TINY_KEY) is False

    # None of that reached it: its owner still sees it running, with its old end.
    info = Sandbox.get_info(sandbox_id)
    assert info.state == SandboxState.RUNNING
    assert (info.end_at - info.started_at).total_seconds() > 60


def test_sandbox_traffic_needs_the_sandbox_access_token(shared_sandbox, service):
    # What a client that knows only the id (not the envdAccessToken from create or connect)
    # gets from the sandbox URL the SDK uses: a refusal, not the file.
    headers = {"E2b-Sandbox-Id": shared_sandbox.sandbox_id, "E2b-Sandbox-Port": "49983"}
    for extra in ({}, {"X-Access-Token": "not-the-token"}):
        r = httpx.get(f"{service.url}/files", params={"path": "/etc/hostname"},
                      headers={**headers, **extra}, timeout=REQUEST_TIMEOUT)
        assert r.status_code in (401, 403), (r.status_code, r.text[:200])
        assert r.text.strip() != "kiln"  # the image's /etc/hostname


def test_quota_is_answered_with_rate_limit(new_sandbox):
    first = [new_sandbox(api_key=TINY_KEY, timeout=600) for _ in range(TINY_MAX_SANDBOXES)]
    with pytest.raises(RateLimitException) as refused:
        # retries=0: the SDK would otherwise retry a 429 with back-off before raising.
        new_sandbox(api_key=TINY_KEY, retries=0)
    assert refused.value.status_code == 429
    listed = sorted(i.sandbox_id for i in Sandbox.list(api_key=TINY_KEY).next_items())
    assert listed == sorted(s.sandbox_id for s in first)

    # A killed sandbox frees its place.
    assert first[0].kill() is True
    replacement = new_sandbox(api_key=TINY_KEY, timeout=600)
    assert replacement.is_running()


def test_bad_api_key_is_refused(shared_sandbox):
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="not-a-key", retries=0, request_timeout=REQUEST_TIMEOUT)
    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key="not-a-key").next_items()
    with pytest.raises(AuthenticationException):
        Sandbox.get_info(shared_sandbox.sandbox_id, api_key="not-a-key")
    with pytest.raises(AuthenticationException):
        Sandbox.kill(shared_sandbox.sandbox_id, api_key="not-a-key")
    assert Sandbox.get_info(shared_sandbox.sandbox_id).state == SandboxState.RUNNING
