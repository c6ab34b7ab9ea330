#!/usr/bin/env python3
"""A misbehaving registry for error tests: prints its port, then serves on 127.0.0.1.

  /v2/broken/...       a valid manifest and config; the layer blob's response promises
                       1 MiB (Content-Length) and closes the connection after 300000 bytes
  /v2/ratelimited/...  429 Too Many Requests
  /v2/failing/...      503 Service Unavailable
"""
import hashlib, json, signal, socket, sys
signal.pthread_sigmask(signal.SIG_UNBLOCK, signal.valid_signals())  # spawned with a blocked mask by a test process
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

layer = bytes(range(256)) * 4096  # 1 MiB
config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
def digest(b): return "sha256:" + hashlib.sha256(b).hexdigest()
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(layer), "size": len(layer)}]}).encode()

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self, status, body=b"", ctype="application/json", length=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        p = self.path
        if p == "/v2/": return self.reply(200, b"{}")
        if p.startswith("/v2/ratelimited/"): return self.reply(429, b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}')
        if p.startswith("/v2/failing/"): return self.reply(503, b'{"errors":[{"code":"UNAVAILABLE","message":"down for maintenance"}]}')
        if p == "/v2/broken/manifests/latest":
            return self.reply(200, manifest, "application/vnd.oci.image.manifest.v1+json")
        if p == "/v2/broken/blobs/" + digest(config): return self.reply(200, config, "application/octet-stream")
        if p == "/v2/broken/blobs/" + digest(layer):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(layer)))
            self.end_headers()
            self.wfile.write(layer[:300000]); self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.reply(404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}')
    def log_message(self, *args): pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
