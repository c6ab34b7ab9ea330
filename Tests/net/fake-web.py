#!/usr/bin/env python3
# The domain tests' fake internet (Tests/KilnTests/DomainEgressTests.swift), run in the test's
# own namespace: a DNS server on 198.18.0.2:53 and HTTP (80) and HTTPS (443) servers on
# 198.18.0.2 ("allowed.test") and 198.18.1.2 ("denied.test"), plain HTTP on 8080 too (a port the
# proxy does not take). rebind.test resolves to a private address. Every DNS question and accepted connection is logged to DIR/log.
#   fake-web.py DIR    (DIR holds cert.pem and key.pem; prints "ready" once all are bound)
import os, socket, ssl, sys, threading
import fakedns  # beside this script

ALLOWED, DENIED = "198.18.0.2", "198.18.1.2"
NAMES = {"allowed.test": ALLOWED, "denied.test": DENIED, "rebind.test": "10.0.0.1"}
directory = sys.argv[1]
log = open(os.path.join(directory, "log"), "a", buffering=1)
lock = threading.Lock()

def note(line):
    with lock:
        log.write(line + "\n")

def dns(sock):
    fakedns.serve(sock, NAMES.get, lambda name, qtype: note("dns %s %d" % (name, qtype)))

def handle(conn, address, context):
    try:
        conn.settimeout(60)
        if context:
            conn = context.wrap_socket(conn, server_side=True)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        body = ("allowed-server" if address == ALLOWED else "denied-server") + "\n"
        conn.sendall(("HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)).encode())
    except (OSError, ssl.SSLError):
        pass
    finally:
        conn.close()

def serve(listener, address, port, context):
    while True:
        conn, _ = listener.accept()
        note("conn %s:%d" % (address, port))
        threading.Thread(target=handle, args=(conn, address, context), daemon=True).start()

context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem"))
# The guest's client is busybox wget (its own TLS 1.2): OpenSSL 3's default security level refuses
# the handshake it offers.
context.set_ciphers("DEFAULT:@SECLEVEL=0")
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((ALLOWED, 53))
threads = [threading.Thread(target=dns, args=(udp,), daemon=True)]
for address in (ALLOWED, DENIED):
    for port in (80, 443, 8080):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, port))
        listener.listen(32)
        threads.append(threading.Thread(target=serve, args=(listener, address, port, context if port == 443 else None), daemon=True))
for t in threads:
    t.start()
print("ready", flush=True)
threading.Event().wait()
