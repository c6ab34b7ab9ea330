"""sandbox.commands: output, exit codes, environment, working directory, users, background
processes and stdin, as the E2B SDK shows them. One sandbox for the module (shared_sandbox)."""

import pytest
from e2b import CommandExitException

from support import run


def test_echo_prints_hello(shared_sandbox):
    result = run(shared_sandbox, "echo hello")
    assert result.stdout == "hello\n"
    assert result.stderr == ""
    assert result.exit_code == 0


def test_output_callbacks_get_each_stream(shared_sandbox):
    out, err = [], []
    result = run(shared_sandbox, "echo to-stdout; echo to-stderr >&2", on_stdout=out.append, on_stderr=err.append)
    assert "".join(out) == "to-stdout\n" == result.stdout
    assert "".join(err) == "to-stderr\n" == result.stderr


def test_failing_command_raises_with_exit_code_and_output(shared_sandbox):
    with pytest.raises(CommandExitException) as failure:
        run(shared_sandbox, "echo partial; echo broken >&2; exit 3")
    assert failure.value.exit_code == 3
    assert failure.value.stdout == "partial\n"
    assert failure.value.stderr == "broken\n"


def test_envs_from_create_and_from_run(shared_sandbox):
    # shared_sandbox was created with envs={"KILN_CREATE_ENV": "from-create"}.
    result = run(shared_sandbox, 'echo "$KILN_CREATE_ENV|$KILN_RUN_ENV"', envs={"KILN_RUN_ENV": "from-run"})
    assert result.stdout == "from-create|from-run\n"
    # A command's envs win over the sandbox's.
    result = run(shared_sandbox, 'echo "$KILN_CREATE_ENV"', envs={"KILN_CREATE_ENV": "overridden"})
    assert result.stdout == "overridden\n"


def test_cwd(shared_sandbox):
    assert run(shared_sandbox, "pwd", cwd="/tmp").stdout == "/tmp\n"


def test_default_user_is_user_in_its_home(shared_sandbox):
    result = run(shared_sandbox, 'id -un; id -u; echo "$HOME"; pwd')
    assert result.stdout == "user\n1000\n/home/user\n/home/user\n"


def test_user_root(shared_sandbox):
    result = run(shared_sandbox, 'id -un; id -u; echo "$HOME"', user="root")
    assert result.stdout == "root\n0\n/root\n"


def test_background_command_is_listed_then_killed(shared_sandbox):
    handle = run(shared_sandbox, "sleep 600", background=True)
    listed = {p.pid: p for p in shared_sandbox.commands.list()}
    assert handle.pid in listed
    assert listed[handle.pid].cmd == "/bin/bash"
    assert listed[handle.pid].args == ["-l", "-c", "sleep 600"]

    assert handle.kill() is True
    # A killed command ends with a non-zero result, which wait() raises.
    with pytest.raises(CommandExitException) as ended:
        handle.wait()
    assert ended.value.exit_code != 0
    assert handle.pid not in [p.pid for p in shared_sandbox.commands.list()]
    # Killing it again: the SDK reports that there is no such command.
    assert shared_sandbox.commands.kill(handle.pid) is False


def test_stdin_sent_then_closed(shared_sandbox):
    handle = run(shared_sandbox, "cat", background=True, stdin=True)
    handle.send_stdin("hello stdin\n")
    shared_sandbox.commands.send_stdin(handle.pid, b"bytes too\n")
    handle.close_stdin()
    result = handle.wait()
    assert result.stdout == "hello stdin\nbytes too\n"
    assert result.exit_code == 0
