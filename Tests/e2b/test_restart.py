"""A service restart: `kiln serve` is SIGKILLed and started again on the same state directory and
port. Its running sandboxes keep running and stay usable from the clients that had them."""

import uuid

import pytest
from e2b import Sandbox, SandboxQuery, SandboxState

from support import REQUEST_TIMEOUT, run


@pytest.mark.slow
@pytest.mark.restart
def test_sandbox_survives_a_service_crash_and_restart(service, new_sandbox):
    tag = uuid.uuid4().hex
    sbx = new_sandbox(timeout=900, metadata={"run": tag})
    sbx.files.write("/home/user/before-restart.txt", tag)
    sleeper = run(sbx, "sleep 600", background=True)
    sleeper.disconnect()

    service.crash()
    service.start()

    info = Sandbox.get_info(sbx.sandbox_id)
    assert info.state == SandboxState.RUNNING
    assert info.metadata == {"run": tag}
    assert [i.sandbox_id for i in Sandbox.list(query=SandboxQuery(metadata={"run": tag})).next_items()] == [sbx.sandbox_id]
    # The client from before the restart still works: same id, same access token.
    assert run(sbx, "cat /home/user/before-restart.txt").stdout == tag
    assert sleeper.pid in [p.pid for p in sbx.commands.list()]
    again = Sandbox.connect(sbx.sandbox_id, request_timeout=REQUEST_TIMEOUT)
    assert again.files.read("/home/user/before-restart.txt") == tag

    # And the restarted service makes new sandboxes.
    fresh = new_sandbox()
    assert run(fresh, "echo fresh").stdout == "fresh\n"

