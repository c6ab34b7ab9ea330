"""sandbox.files: write/read (text and 10 MiB of bytes), list, exists, make_dir, rename, remove,
get_info, and who owns what. One sandbox for the module; each test works under its own path."""

import hashlib
import os
import uuid

import pytest
from e2b import AuthenticationException, FileNotFoundException, FileType, SandboxException

from support import run

BIG = 10 * 1024 * 1024
TRANSFER_TIMEOUT = 900  # seconds: guest I/O through the agent is slow on emulated-kernel hosts


@pytest.mark.slow
def test_10_mib_of_bytes_round_trip(shared_sandbox):
    data = os.urandom(BIG)
    digest = hashlib.sha256(data).hexdigest()
    path = f"/home/user/big-{uuid.uuid4().hex[:8]}.bin"

    info = shared_sandbox.files.write(path, data, request_timeout=TRANSFER_TIMEOUT)
    assert info.path == path
    assert info.type == FileType.FILE

    back = shared_sandbox.files.read(path, format="bytes", request_timeout=TRANSFER_TIMEOUT)
    assert len(back) == BIG
    assert hashlib.sha256(back).hexdigest() == digest
    # The guest itself sees the same bytes on its disk.
    assert run(shared_sandbox, f"sha256sum {path}").stdout.split()[0] == digest
    assert shared_sandbox.files.get_info(path).size == BIG
    shared_sandbox.files.remove(path)


def test_text_write_creates_parents_and_reads_back(shared_sandbox):
    path = f"/home/user/notes-{uuid.uuid4().hex[:8]}/deeper/hello.txt"
    text = "héllo, sandbox\nsecond line\n"
    info = shared_sandbox.files.write(path, text)
    assert info.name == "hello.txt"
    assert info.path == path
    assert shared_sandbox.files.read(path) == text
    assert bytes(shared_sandbox.files.read(path, format="bytes")) == text.encode()
    # The SDK's other upload form (application/octet-stream instead of multipart/form-data).
    raw = path.replace("hello.txt", "raw.bin")
    shared_sandbox.files.write(raw, b"\x00\x01binary\xff", use_octet_stream=True)
    assert bytes(shared_sandbox.files.read(raw, format="bytes")) == b"\x00\x01binary\xff"


def test_directory_operations(shared_sandbox):
    files = shared_sandbox.files
    top = f"/home/user/fs-{uuid.uuid4().hex[:8]}"

    assert files.make_dir(top) is True
    assert files.make_dir(top) is False  # already there
    assert files.exists(top)
    assert files.get_info(top).type == FileType.DIR

    files.write(f"{top}/a.txt", "abc")
    assert files.make_dir(f"{top}/sub") is True
    entries = sorted(files.list(top), key=lambda e: e.name)
    assert [(e.name, e.type, e.path) for e in entries] == [
        ("a.txt", FileType.FILE, f"{top}/a.txt"),
        ("sub", FileType.DIR, f"{top}/sub"),
    ]

    info = files.get_info(f"{top}/a.txt")
    assert (info.name, info.path, info.type, info.size) == ("a.txt", f"{top}/a.txt", FileType.FILE, 3)
    assert (info.owner, info.group) == ("user", "user")  # written as the default user

    moved = files.rename(f"{top}/a.txt", f"{top}/sub/b.txt")
    assert (moved.name, moved.path) == ("b.txt", f"{top}/sub/b.txt")
    assert not files.exists(f"{top}/a.txt")
    assert files.read(f"{top}/sub/b.txt") == "abc"

    files.remove(f"{top}/sub/b.txt")
    assert not files.exists(f"{top}/sub/b.txt")
    files.remove(top)  # a directory goes with what is in it
    assert not files.exists(top)


def test_missing_file_raises_file_not_found(shared_sandbox):
    missing = f"/home/user/no-such-{uuid.uuid4().hex[:8]}"
    with pytest.raises(FileNotFoundException):
        shared_sandbox.files.read(missing)
    with pytest.raises(FileNotFoundException):
        shared_sandbox.files.get_info(missing)
    with pytest.raises(FileNotFoundException):
        shared_sandbox.files.list(missing)


def test_files_respect_the_user(shared_sandbox):
    name = f"/root/owned-{uuid.uuid4().hex[:8]}"
    # /root is not the default user's: the write is refused and nothing appears.
    with pytest.raises((SandboxException, AuthenticationException)):
        shared_sandbox.files.write(name, "nope")
    assert not shared_sandbox.files.exists(name, user="root")

    info = shared_sandbox.files.write(name, "yes", user="root")
    assert info.path == name
    assert shared_sandbox.files.get_info(name, user="root").owner == "root"
    assert shared_sandbox.files.read(name, user="root") == "yes"
