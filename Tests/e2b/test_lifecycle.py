"""Sandbox lifecycle through the control API: list with a metadata filter, get_info, connect,
kill, set_timeout, expiry, and pause/resume keeping files and running processes."""

import datetime
import time
import uuid

import pytest
from e2b import Sandbox, SandboxNotFoundException, SandboxQuery, SandboxState

from support import REQUEST_TIMEOUT, run, wait_until


def listed_ids(query=None, **opts):
    return [info.sandbox_id for info in Sandbox.list(query=query, **opts).next_items()]


def gone(sandbox_id):
    try:
        Sandbox.get_info(sandbox_id)
        return False
    except SandboxNotFoundException:
        return True


def test_list_filters_by_metadata(shared_sandbox):
    tag = shared_sandbox.test_tag
    infos = Sandbox.list(query=SandboxQuery(metadata={"run": tag})).next_items()
    assert [i.sandbox_id for i in infos] == [shared_sandbox.sandbox_id]
    assert infos[0].metadata == {"suite": "kiln-e2b", "run": tag}
    assert infos[0].state == SandboxState.RUNNING
    # Every pair must match.
    assert listed_ids(SandboxQuery(metadata={"suite": "kiln-e2b", "run": tag})) == [shared_sandbox.sandbox_id]
    assert listed_ids(SandboxQuery(metadata={"suite": "other", "run": tag})) == []
    assert listed_ids(SandboxQuery(metadata={"run": "no-such-run"})) == []
    assert shared_sandbox.sandbox_id in listed_ids()


def test_get_info(shared_sandbox):
    for info in (shared_sandbox.get_info(), Sandbox.get_info(shared_sandbox.sandbox_id)):
        assert info.sandbox_id == shared_sandbox.sandbox_id
        assert "base" in (info.template_id, info.name)
        assert info.state == SandboxState.RUNNING
        assert info.metadata == {"suite": "kiln-e2b", "run": shared_sandbox.test_tag}
        assert info.started_at < info.end_at
        assert info.cpu_count >= 1
        assert info.memory_mb > 0
        assert info.envd_version


def test_connect_by_id_reaches_the_same_sandbox(shared_sandbox):
    probe = f"/tmp/connect-{uuid.uuid4().hex[:8]}"
    shared_sandbox.files.write(probe, "same sandbox")
    other = Sandbox.connect(shared_sandbox.sandbox_id, request_timeout=REQUEST_TIMEOUT)
    assert other.sandbox_id == shared_sandbox.sandbox_id
    assert other.files.read(probe) == "same sandbox"


def test_kill(new_sandbox):
    sbx = new_sandbox()
    assert sbx.is_running()
    assert sbx.kill() is True
    assert gone(sbx.sandbox_id)
    assert not sbx.is_running()
    assert sbx.sandbox_id not in listed_ids()
    assert Sandbox.kill(sbx.sandbox_id) is False  # nothing left to kill


@pytest.mark.slow
def test_set_timeout_extends_life(new_sandbox):
    sbx = new_sandbox(timeout=15)
    before = datetime.datetime.now(datetime.timezone.utc)
    sbx.set_timeout(600)
    # The new end is counted from now (E2B's semantics), not from the creation.
    assert sbx.get_info().end_at >= before + datetime.timedelta(seconds=500)
    time.sleep(25)  # past the original 15 s
    assert sbx.get_info().state == SandboxState.RUNNING
    assert sbx.is_running()


@pytest.mark.slow
def test_sandbox_expires_after_its_timeout(new_sandbox):
    sbx = new_sandbox(timeout=5)
    wait_until(lambda: gone(sbx.sandbox_id), "the sandbox to expire after timeout=5", timeout=120)
    assert not sbx.is_running()
    assert sbx.sandbox_id not in listed_ids()
    assert Sandbox.kill(sbx.sandbox_id) is False
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sbx.sandbox_id)


@pytest.mark.slow
def test_pause_then_resume_keeps_files_and_processes(new_sandbox):
    tag = uuid.uuid4().hex
    sbx = new_sandbox(timeout=900, metadata={"run": tag})
    sbx.files.write("/home/user/state.txt", tag)
    sleeper = run(sbx, "sleep 600", background=True)
    sleeper.disconnect()  # the process keeps running; only this client stops listening

    assert sbx.pause() is True
    assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.PAUSED
    assert listed_ids(SandboxQuery(metadata={"run": tag}, state=[SandboxState.PAUSED])) == [sbx.sandbox_id]
    assert listed_ids(SandboxQuery(metadata={"run": tag}, state=[SandboxState.RUNNING])) == []
    assert not sbx.is_running()
    assert sbx.pause() is False  # already paused

    resumed = Sandbox.connect(sbx.sandbox_id, timeout=900, request_timeout=REQUEST_TIMEOUT)
    assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.RUNNING
    assert resumed.files.read("/home/user/state.txt") == tag
    listed = {p.pid: p for p in resumed.commands.list()}
    assert sleeper.pid in listed
    assert listed[sleeper.pid].args == ["-l", "-c", "sleep 600"]
    # It is alive in the guest, not only in a table, and new commands run.
    assert run(resumed, f"kill -0 {sleeper.pid} && echo alive").stdout == "alive\n"
    # The object that paused it works again too.
    assert sbx.files.read("/home/user/state.txt") == tag


@pytest.mark.slow
def test_snapshot_and_fork_start_sandboxes_with_the_source_state(new_sandbox):
    tag = uuid.uuid4().hex
    source = new_sandbox(timeout=900, metadata={"run": tag})
    source.files.write("/home/user/origin.txt", tag)

    # A saved snapshot is a template of this tenant's: a new sandbox starts with the file.
    snap = source.create_snapshot()
    assert snap.snapshot_id in [s.snapshot_id for s in Sandbox.list_snapshots(sandbox_id=source.sandbox_id).next_items()]
    from_snap = new_sandbox(template=snap.snapshot_id, timeout=300)
    assert from_snap.files.read("/home/user/origin.txt") == tag

    # Two forks: each has the source's file and metadata, and they diverge independently.
    forks = source.fork(count=2)
    assert len(forks) == 2 and all(isinstance(f, Sandbox) for f in forks), forks
    try:
        a, b = forks
        assert {a.sandbox_id, b.sandbox_id, source.sandbox_id}.__len__() == 3
        a.files.write("/home/user/origin.txt", "changed in a")
        assert b.files.read("/home/user/origin.txt") == tag
        assert source.files.read("/home/user/origin.txt") == tag
        assert Sandbox.get_info(b.sandbox_id).metadata.get("run") == tag
    finally:
        for f in forks:
            if isinstance(f, Sandbox):
                f.kill()

    # Deleting the snapshot leaves the sandbox made from it running.
    Sandbox.delete_snapshot(snap.snapshot_id)
    assert snap.snapshot_id not in [s.snapshot_id for s in Sandbox.list_snapshots().next_items()]
    assert from_snap.files.read("/home/user/origin.txt") == tag
