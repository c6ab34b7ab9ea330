"""Volumes: E2B's named volumes, kept by the service under its state directory and mounted
read-write in sandboxes over virtio-fs (docs/volumes.md, "In the service")."""

import uuid

import pytest
from e2b import Sandbox, SandboxException, Volume, VolumeException, VolumeNotFoundException

from support import REQUEST_TIMEOUT, TINY_KEY, run


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.mark.slow
def test_a_volume_outlives_its_sandbox_and_is_shared(service, new_sandbox):
    name = unique("data")
    vol = Volume.create(name, request_timeout=REQUEST_TIMEOUT)
    assert vol.name == name and vol.volume_id
    assert (vol.volume_id, name) in [(v.volume_id, v.name) for v in Volume.list()]
    assert Volume.get_info(vol.volume_id).name == name
    host_dir = service.state_dir / "volumes" / "acme" / vol.volume_id

    # The first sandbox writes into the volume (as the SDK's default user) and is killed.
    token = uuid.uuid4().hex
    first = new_sandbox(volume_mounts={"/data": name})
    r = run(first, f"mkdir -p /data/sub && echo {token} > /data/sub/note.txt && id -un && stat -c %U /data/sub/note.txt")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.split() == ["user", "user"]
    assert [m["path"] for m in first.get_info().volume_mounts] == ["/data"]
    first.kill()

    # The file is on the host, in the service's state directory.
    assert (host_dir / "sub" / "note.txt").read_text() == token + "\n"

    # A second sandbox, the volume at another path, reads it back.
    second = new_sandbox(volume_mounts={"/mnt/shared": vol})
    assert second.files.read("/mnt/shared/sub/note.txt") == token + "\n"

    # A snapshot cannot carry the guest's open volume files: no pause, no snapshot (nor fork).
    with pytest.raises(SandboxException, match="has volumes mounted"):
        second.pause()
    with pytest.raises(SandboxException, match="has volumes mounted"):
        second.create_snapshot()

    # Not deleted while mounted; deleted once its sandbox is gone.
    with pytest.raises(VolumeException, match="409"):
        Volume.destroy(vol.volume_id)
    assert host_dir.is_dir()
    second.kill()
    assert Volume.destroy(vol.volume_id) is True
    assert not host_dir.exists()
    with pytest.raises(VolumeNotFoundException):
        Volume.get_info(vol.volume_id)
    assert Volume.destroy(vol.volume_id) is False


def test_a_tenant_cannot_see_or_mount_another_tenants_volume(service):
    name = unique("private")
    vol = Volume.create(name, request_timeout=REQUEST_TIMEOUT)
    try:
        # Refused before any VM starts: the name is unknown to the other tenant.
        with pytest.raises(SandboxException, match=f"no volume named '{name}'"):
            Sandbox.create(volume_mounts={"/data": name}, api_key=TINY_KEY, request_timeout=REQUEST_TIMEOUT)
        with pytest.raises(VolumeNotFoundException):
            Volume.get_info(vol.volume_id, api_key=TINY_KEY)
        assert Volume.destroy(vol.volume_id, api_key=TINY_KEY) is False
        assert vol.volume_id not in [v.volume_id for v in Volume.list(api_key=TINY_KEY)]
        assert Sandbox.list(api_key=TINY_KEY).next_items() == []
        # Its owner still has it.
        assert Volume.get_info(vol.volume_id).name == name
    finally:
        Volume.destroy(vol.volume_id)


def test_bad_volume_input_is_refused(service):
    with pytest.raises(VolumeException, match="invalid volume name"):
        Volume.create("../escape", request_timeout=REQUEST_TIMEOUT)
    name = unique("paths")
    Volume.create(name, request_timeout=REQUEST_TIMEOUT)
    try:
        with pytest.raises(VolumeException, match="already exists"):
            Volume.create(name, request_timeout=REQUEST_TIMEOUT)
        for path, why in (("relative", "must be absolute"), ("/", "must not be /"), ("/a/../etc", "'..'")):
            with pytest.raises(SandboxException, match=why):
                Sandbox.create(volume_mounts={path: name}, request_timeout=REQUEST_TIMEOUT)
    finally:
        for v in Volume.list():
            if v.name == name:
                Volume.destroy(v.volume_id)
