#!/usr/bin/env python3
"""A tiny token service for the registry's `auth: token` (docker/distribution token spec).

    token-server.py PORT KEY CERT ISSUER SERVICE USER:PASS [--anonymous-pull]

GET /token?service=...&scope=repository:NAME:ACTIONS answers {"token": JWT}: RS256, signed with
`openssl dgst -sha256 -sign KEY`, the certificate in the x5c header (the registry trusts CERT).
Basic credentials must match USER:PASS (401 otherwise); without credentials only pull is granted,
and only with --anonymous-pull. Every request is logged to stderr as "token user=... scope=...".
"""
import base64, json, os, signal, subprocess, sys, time
signal.pthread_sigmask(signal.SIG_UNBLOCK, signal.valid_signals())  # spawned with a blocked mask by a test process
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlparse, parse_qs

port, key, cert, issuer, service, creds = sys.argv[1:7]
anonymous_pull = "--anonymous-pull" in sys.argv[7:]
with open(cert) as f:
    pem = f.read()
der = base64.b64decode("".join(l for l in pem.splitlines() if "-----" not in l))

def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

def sign(claims):
    header = {"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(der).decode()]}
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing_input.encode(),
                         capture_output=True, check=True).stdout
    return signing_input + "." + b64url(sig)

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlparse(self.path)
        if url.path != "/token":
            self.send_error(404); return
        q = parse_qs(url.query)
        user = None
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            given = base64.b64decode(auth[6:]).decode(errors="replace")
            if given != creds:
                sys.stderr.write("token refused user=%s\n" % given.split(":")[0]); sys.stderr.flush()
                self.send_response(401); self.send_header("Content-Length", "0"); self.end_headers(); return
            user = given.split(":")[0]
        access = []
        for scope in q.get("scope", []):
            for s in scope.split(" "):
                parts = s.split(":")
                if len(parts) != 3 or parts[0] != "repository":
                    continue
                wanted = parts[2].split(",")
                granted = wanted if user else (["pull"] if anonymous_pull and "pull" in wanted else [])
                if granted:
                    access.append({"type": "repository", "name": parts[1], "actions": granted})
        if user is None and not access:
            self.send_response(401); self.send_header("Content-Length", "0"); self.end_headers(); return
        now = int(time.time())
        token = sign({"iss": issuer, "sub": user or "", "aud": q.get("service", [service])[0],
                      "exp": now + 600, "nbf": now - 60, "iat": now, "jti": os.urandom(8).hex(), "access": access})
        body = json.dumps({"token": token, "expires_in": 600}).encode()
        sys.stderr.write("token user=%s scope=%s\n" % (user or "-", ",".join(q.get("scope", [])))); sys.stderr.flush()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(port)), Handler).serve_forever()
