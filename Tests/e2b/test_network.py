"""Sandbox networks through the service (docs/net.md, "Networks in the service"): E2B's
`allow_internet_access` and `network` on create and `Sandbox.update_network` on a running sandbox,
driven by the unmodified SDK.

The network rule: the "internet" is a namespace this module creates (198.19.7.2, in the
benchmarking range, routed by the host over the module's veth), with 169.254.169.254 routed into
it too, so that even a broken policy reaches nothing but the test's own namespace."""

import os
import subprocess
import time

import pytest

from support import run, wait_until

SERVER, HOST_SIDE, PORT = "198.19.7.2", "198.19.7.1", 8080
METADATA = "169.254.169.254"


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def internet():
    """A namespace with an HTTP server answering `internet-hello` on SERVER and METADATA."""
    pid = os.getpid() % 100000
    ns, veth, peer = f"kiln-e2b-inet-{pid}", f"kte{pid}", f"ktf{pid}"
    subprocess.run(["ip", "link", "del", veth], capture_output=True)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    ip("netns", "add", ns)
    server = None
    try:
        ip("link", "add", veth, "type", "veth", "peer", "name", peer, "netns", ns)
        ip("addr", "add", f"{HOST_SIDE}/30", "dev", veth)
        ip("link", "set", veth, "up")
        ip("route", "replace", f"{METADATA}/32", "via", SERVER)
        ip("-n", ns, "addr", "add", f"{SERVER}/30", "dev", peer)
        ip("-n", ns, "addr", "add", f"{METADATA}/32", "dev", "lo")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "link", "set", peer, "up")
        ip("-n", ns, "route", "add", "default", "via", HOST_SIDE)
        with open(f"/proc/sys/net/ipv4/conf/{veth}/forwarding", "w") as f:
            f.write("1")
        code = (
            "import http.server\n"
            "class H(http.server.BaseHTTPRequestHandler):\n"
            "    def do_GET(self):\n"
            "        self.send_response(200); self.end_headers(); self.wfile.write(b'internet-hello\\n')\n"
            "    def log_message(self, *a): pass\n"
            f"http.server.ThreadingHTTPServer(('0.0.0.0', {PORT}), H).serve_forever()\n"
        )
        server = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-c", code])
        deadline = time.monotonic() + 10
        while subprocess.run(["ip", "netns", "exec", ns, "python3", "-c",
                              f"import socket; socket.create_connection(('{SERVER}', {PORT}), 1)"],
                             capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "the fake internet's server did not start"
            time.sleep(0.2)
        yield
    finally:
        if server:
            server.kill()
            server.wait()
        subprocess.run(["ip", "route", "del", f"{METADATA}/32", "via", SERVER], capture_output=True)
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def fetch(sbx, address, seconds=60):
    """An HTTP GET from inside the guest (bash's /dev/tcp: no client program needed): the output
    when it reached the fake internet's server, else None. Why it failed is kept in `last_failure`
    for the assertion's message. A refused connection fails at once (the policy answers with a
    reset); SECONDS bounds one that gets no answer, long enough for the first SYN's retransmits
    on a loaded emulated guest (a 15 s bound failed once in CI, on a fresh sandbox's first fetch)."""
    global last_failure
    cmd = (f"timeout {seconds} bash -c 'exec 3<>/dev/tcp/{address}/{PORT} && "
           f"printf \"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n\" >&3 && cat <&3'")
    started = time.monotonic()
    try:
        r = run(sbx, cmd)
    except Exception as e:  # CommandExitException: the connection was refused or timed out
        last_failure = f"{address}: {type(e).__name__} after {time.monotonic() - started:.1f} s: {e}"
        return None
    if "internet-hello" in r.stdout:
        return r.stdout
    last_failure = f"{address}: exit 0 after {time.monotonic() - started:.1f} s without the server's answer: {r.stdout!r}"
    return None


last_failure = ""


def host_veths():
    return {name for name in os.listdir("/sys/class/net") if name.startswith("kiln-h")}


@pytest.mark.slow
def test_egress_follows_the_policy_and_changes_live(service, internet, new_sandbox):
    before = host_veths()
    sbx = new_sandbox(allow_internet_access=True, timeout=600)
    assert fetch(sbx, SERVER) is not None, last_failure
    # Always denied, whatever the policy says, unless allowed by CIDR: the metadata address.
    assert fetch(sbx, METADATA) is None
    info = sbx.get_info()
    assert info.allow_internet_access is True

    # A live change: the server's address denied, then open again; no restart in between.
    started = sbx.commands.run("cat /proc/uptime", request_timeout=60).stdout.split()[0]
    sbx.update_network({"deny_out": [f"{SERVER}/32"]})
    assert fetch(sbx, SERVER) is None
    assert sbx.get_info().network["deny_out"] == [SERVER]
    sbx.update_network({"deny_out": ["0.0.0.0/0"], "allow_out": [SERVER]})
    assert fetch(sbx, SERVER) is not None, last_failure
    assert float(sbx.commands.run("cat /proc/uptime", request_timeout=60).stdout.split()[0]) >= float(started)

    # Killed: its network (the host's veth end) goes with it.
    assert host_veths() - before
    sbx.kill()
    deadline = time.monotonic() + 20
    while host_veths() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not host_veths() - before, "the sandbox's network outlived it"


@pytest.mark.slow
def test_no_internet_access_reaches_nothing_but_what_is_allowed(service, internet, new_sandbox):
    closed = new_sandbox(allow_internet_access=False)
    assert fetch(closed, SERVER) is None
    assert closed.get_info().allow_internet_access is False
    # Opened live by an explicit allow (allow wins over the closed default).
    closed.update_network({"allow_out": [f"{SERVER}/32"], "allow_internet_access": False})
    assert fetch(closed, SERVER) is not None, last_failure


def test_a_sandbox_that_asks_for_no_network_has_no_network_device(service, shared_sandbox):
    r = run(shared_sandbox, "ls /sys/class/net")
    assert r.stdout.split() == ["lo"]
    assert shared_sandbox.get_info().allow_internet_access is None


def test_bad_network_rules_are_refused_with_the_field_named(service, new_sandbox):
    from e2b import InvalidArgumentException, SandboxException
    with pytest.raises((InvalidArgumentException, SandboxException)) as e:
        new_sandbox(network={"deny_out": ["300.1.1.1"]})
    assert "denyOut" in str(e.value) and "300.1.1.1" in str(e.value)


def via_service(service, host, path="/", timeout=60):
    """An HTTP GET to the service's listener with the Host header the SDK's get_host names."""
    import urllib.error
    import urllib.request
    req = urllib.request.Request(service.url + path, headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.slow
def test_a_port_in_the_sandbox_is_reached_through_the_service(service, new_sandbox):
    # No network device: the request is carried over the sandbox's vsock session.
    sbx = new_sandbox()
    token = os.urandom(8).hex()
    run(sbx, f"mkdir -p /tmp/www && echo {token} > /tmp/www/index.html")
    # No time limit on the server (the SDK's default of 60 s ends a command, background or not,
    # and python3 takes a while to start on an emulated guest kernel).
    server = sbx.commands.run("cd /tmp/www && exec python3 -m http.server 8000", background=True, timeout=0)
    host = sbx.get_host(8000)
    assert host.startswith(f"8000-{sbx.sandbox_id}.")

    from support import wait_until
    status, body = wait_until(lambda: (lambda r: r if r[0] == 200 else None)(via_service(service, host, "/index.html")),
                              "the guest's HTTP server through the service", timeout=240)
    assert body == token + "\n"
    # The guest's own answers pass through as they are; a port nothing listens on, and an
    # unknown sandbox, are the proxy's 502.
    assert via_service(service, host, "/missing")[0] == 404
    assert via_service(service, sbx.get_host(8001))[0] == 502
    assert via_service(service, "8000-iunknownsandbox00000.e2b.app")[0] == 502

    # WebSocket: an echo server of the test's own in the guest (python3's standard library only).
    # The guest server's 101 (its Sec-WebSocket-Accept, computed from the client's key) reaches
    # the client unchanged, then frames go both ways through the same connection.
    ws = sbx.commands.run(f"exec python3 -c '{WS_ECHO_SERVER}'", background=True, timeout=0)
    ws_host = sbx.get_host(8002)
    outcome = wait_until(lambda: (lambda r: r if r[0] == 101 else None)(websocket_echo(service, ws_host, ["hello", "x" * 300])),
                         "a WebSocket through the service to the guest's echo server", timeout=240)
    _, headers, expected_accept, echoes = outcome
    assert headers.get("upgrade", "").lower() == "websocket" and "upgrade" in headers.get("connection", "").lower()
    assert headers.get("sec-websocket-accept") == expected_accept
    assert echoes == ["echo:hello", "echo:" + "x" * 300]
    # A server that does not switch protocols: its own answer comes back as it is.
    status, _, _, body = websocket_echo(service, host, [], path="/index.html")
    assert status == 200 and body == token + "\n"
    ws.kill()
    server.kill()


# A WebSocket echo server on 127.0.0.1:8002 in the guest (RFC 6455, text frames and close only):
# each text frame comes back as "echo:" + its text. Written for the test; no quote characters
# that the shell's single quotes would end.
WS_ECHO_SERVER = """
import base64, hashlib, socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8002))
s.listen(4)
while True:
    c, _ = s.accept()
    data = b""
    while b"\\r\\n\\r\\n" not in data:
        data += c.recv(4096)
    head, buf = data.split(b"\\r\\n\\r\\n", 1)
    key = [l.split(b":", 1)[1].strip() for l in head.split(b"\\r\\n") if l.lower().startswith(b"sec-websocket-key:")][0]
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Accept: " + accept + b"\\r\\n\\r\\n")
    def take(n):
        global buf
        while len(buf) < n:
            more = c.recv(4096)
            if not more:
                raise EOFError
            buf += more
        out, buf = buf[:n], buf[n:]
        return out
    try:
        while True:
            b0, b1 = take(2)
            n = b1 & 127
            if n == 126:
                n = int.from_bytes(take(2), "big")
            mask = take(4)
            payload = bytes(x ^ mask[i % 4] for i, x in enumerate(take(n)))
            if b0 & 15 == 8:
                c.sendall(bytes([0x88, 0]))
                break
            reply = b"echo:" + payload
            c.sendall(bytes([0x81, 126]) + len(reply).to_bytes(2, "big") + reply if len(reply) > 125 else bytes([0x81, len(reply)]) + reply)
    except EOFError:
        pass
    c.close()
"""


def websocket_echo(service, host, messages, path="/ws", timeout=60):
    """A WebSocket client on a plain socket to the service's listener for HOST: the handshake,
    then each message as a masked text frame and its reply read back, then a close. Returns
    (status, response headers, the Sec-WebSocket-Accept the key calls for, the replies) after a
    101; (status, headers, None, body) for any other answer; (0, {}, None, None) when the
    connection failed."""
    import base64
    import hashlib
    import socket
    import urllib.parse
    u = urllib.parse.urlparse(service.url)
    key = base64.b64encode(os.urandom(16)).decode()
    expected = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
    try:
        s = socket.create_connection((u.hostname, u.port), timeout=timeout)
    except OSError:
        return 0, {}, None, None
    with s:
        s.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        buf = b""

        def take(n):
            nonlocal buf
            while len(buf) < n:
                more = s.recv(65536)
                if not more:
                    raise EOFError(f"closed with {len(buf)} of {n} bytes")
                buf += more
            out, buf = buf[:n], buf[n:]
            return out

        try:
            while b"\r\n\r\n" not in buf:
                more = s.recv(65536)
                if not more:
                    return 0, {}, None, None
                buf += more
        except OSError:
            return 0, {}, None, None
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        if status != 101:
            body = take(int(headers.get("content-length", "0"))).decode()
            return status, headers, None, body
        replies = []
        for text in messages:
            payload, mask = text.encode(), os.urandom(4)
            size = bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
            s.sendall(bytes([0x81]) + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
            b0, b1 = take(2)
            n = b1 & 127
            if n == 126:
                n = int.from_bytes(take(2), "big")
            assert b0 == 0x81, f"a text frame back, not {b0:#x}"
            replies.append(take(n).decode())
        s.sendall(bytes([0x88, 0x80]) + os.urandom(4))
        assert take(2)[0] == 0x88, "the server's close frame"
        return status, headers, expected, replies


def egress_helpers():
    out = subprocess.run(["ps", "-eo", "pid=,comm="], capture_output=True, text=True).stdout
    return {int(p) for p, c in (line.split(None, 1) for line in out.splitlines() if line.strip()) if c.strip() == "kiln-egress"}


@pytest.mark.slow
def test_a_domain_rule_gets_the_sandbox_its_own_dns_answerer(service, new_sandbox):
    before = egress_helpers()
    sbx = new_sandbox(allow_internet_access=False, network={"allow_out": ["allowed.test"]})
    assert sbx.get_info().network["allow_out"] == ["allowed.test"]
    helpers = egress_helpers() - before
    assert len(helpers) == 1, "one egress helper (DNS answerer and Host/SNI proxy) for the sandbox"
    # A name no rule allows does not resolve: Kiln answers the guest's DNS itself.
    r = run(sbx, "python3 -c \"import socket\ntry: print(socket.gethostbyname('denied.example'))\nexcept OSError as e: print('refused', e.errno)\"")
    assert r.stdout.startswith("refused"), r.stdout
    # Live: the helper takes new domain rules (and the record shows them).
    sbx.update_network({"allow_out": ["other.test"], "deny_out": ["0.0.0.0/0"]})
    assert sbx.get_info().network["allow_out"] == ["other.test"]
    sbx.kill()
    wait_until(lambda: not (egress_helpers() & helpers), "the sandbox's egress helper to end with it", timeout=30)
