"""A service restart: `kiln serve` is SIGKILLed and started again on the same state directory and
port. Its running sandboxes keep running and stay usable from the clients that had them."""

import os
import threading
import time
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



@pytest.mark.slow
@pytest.mark.restart
def test_requests_in_flight_when_the_service_is_killed(service, new_sandbox):
    """SIGKILL of `kiln serve` in the middle of a file upload and of a create (with a network, so
    a restore and the launcher's network setup, not a warm pool's sandbox). After the restart
    the upload is either not there or whole (never a part of it, never its temporary file), the
    sandbox it went to answers, and the create either made a sandbox that is listed and works or
    made nothing. What the killed service had started is not left running: the module's fixture
    fails the run on any process of the service left at the end."""
    tag = uuid.uuid4().hex
    sbx = new_sandbox(timeout=900, metadata={"run": tag})
    # 4 MiB: some seconds through the emulated guest's vsock, so the kill lands inside it.
    payload = os.urandom(4 << 20)
    outcomes = {}

    def upload():
        try:
            sbx.files.write("/home/user/in-flight.bin", payload, request_timeout=120)
            outcomes["upload"] = "acknowledged"
        except Exception as e:  # the service went away: not acknowledged
            outcomes["upload"] = repr(e)

    def create():
        try:
            # With a network: never from a warm pool, so the restore (and the launcher's network) is in flight.
            outcomes["create"] = ("answered", Sandbox.create(metadata={"run": tag, "kind": "in-flight"}, timeout=900,
                                                             allow_internet_access=True, request_timeout=120).sandbox_id)
        except Exception as e:
            outcomes["create"] = ("failed", repr(e))

    threads = [threading.Thread(target=upload), threading.Thread(target=create)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    service.crash()
    for t in threads:
        t.join(180)
    service.start()
    print(f"in flight when the service was killed: {outcomes}")

    assert run(sbx, "echo alive").stdout == "alive\n", outcomes
    names = run(sbx, "ls -a /home/user").stdout.split()
    assert not [n for n in names if n.startswith(".kiln-write-")], f"a partial upload's temporary file: {names}"
    if outcomes["upload"] == "acknowledged":
        assert "in-flight.bin" in names
    if "in-flight.bin" in names:
        assert bytes(sbx.files.read("/home/user/in-flight.bin", format="bytes")) == payload, "a part of the upload"

    made = [i.sandbox_id for i in Sandbox.list(query=SandboxQuery(metadata={"run": tag, "kind": "in-flight"})).next_items()]
    assert len(made) <= 1, made
    if outcomes["create"][0] == "answered":
        # The create was answered before the kill: its sandbox must be there.
        assert made == [outcomes["create"][1]], (made, outcomes)
    for sandbox_id in made:
        again = Sandbox.connect(sandbox_id, request_timeout=REQUEST_TIMEOUT)
        assert run(again, "echo made").stdout == "made\n"
        again.kill()
